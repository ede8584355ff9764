_base_ = ['./conv2former-s_in21k-pre_8xb64_in1k.py']
