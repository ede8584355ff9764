_base_ = ['./conv2former-b_32xb128_in21k.py']
