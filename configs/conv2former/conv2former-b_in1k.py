_base_ = ['./conv2former-b_8xb128_in1k.py']
