"""The compact SimSiam pretraining module (Chen & He, CVPR 2021)."""
