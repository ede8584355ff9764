_base_ = ['./conv2former-b_in21k-pre_8xb64_in1k.py']
