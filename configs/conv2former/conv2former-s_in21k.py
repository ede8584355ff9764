_base_ = ['./conv2former-s_32xb128_in21k.py']
