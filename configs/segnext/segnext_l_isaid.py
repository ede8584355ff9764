_base_ = ['./segnext_mscan-l_1xb16-adamw-160k_isaid-896x896.py']
