_base_ = ['./conv2former-is_8xb128_in1k.py']
