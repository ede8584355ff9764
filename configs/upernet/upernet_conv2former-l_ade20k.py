_base_ = ['./upernet_conv2former-l_8xb2-amp-160k_ade20k-640x640.py']
