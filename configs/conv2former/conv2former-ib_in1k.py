_base_ = ['./conv2former-ib_8xb128_in1k.py']
