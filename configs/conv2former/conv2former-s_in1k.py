_base_ = ['./conv2former-s_8xb128_in1k.py']
