_base_ = ['./upernet_conv2former-s_8xb2-amp-160k_ade20k-512x512.py']
