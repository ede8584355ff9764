_base_ = ['./conv2former-is-3conv_8xb128_in1k.py']
