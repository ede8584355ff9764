_base_ = ['./conv2former-t_8xb128_in1k.py']
