_base_ = ['./segnext_mscan-t_1xb16-adamw-80k_pascal-context-59-480x480.py']
