_base_ = ['./conv2former-n_8xb128_in1k.py']
