"""FLYP: finetune like you pretrain."""
