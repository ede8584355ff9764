_base_ = ['./segnext_mscan-l_1xb16-adamw-80k_voc12aug-512x512.py']
