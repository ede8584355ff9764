_base_ = ['./conv2former-ib-3conv_8xb128_in1k.py']
