_base_ = ['./conv2former-l_32xb128_in21k.py']
