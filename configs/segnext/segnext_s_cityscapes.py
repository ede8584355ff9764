_base_ = ['./segnext_mscan-s_1xb8-adamw-160k_cityscapes-1024x1024.py']
