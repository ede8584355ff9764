_base_ = ['./conv2former-l_8xb128_in1k.py']
