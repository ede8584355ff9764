_base_ = ['./segnext_mscan-t_1xb8-adamw-160k_cityscapes-1024x1024.py']
