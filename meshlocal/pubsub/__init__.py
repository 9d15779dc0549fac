"""The local SNS and SQS: moto in server mode, in its own container.

`provision` and `serve` are standalone (boto3, moto and the standard
library only): they are copied into the emulator's image, which holds no
meshlocal. `client` is the host's side: stats, publish, peek.
"""
