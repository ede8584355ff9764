_base_ = ['./segnext_mscan-t_1xb16-adamw-160k_ade20k-512x512.py']
