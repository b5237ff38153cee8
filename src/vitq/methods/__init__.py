"""Calibration recipes: each names how intervals are initialised and searched.

A recipe is a :class:`MethodSpec`; the calibration engine (:mod:`vitq.calibration.engine`) executes it.

=====================  ==========  ===========  =======  =========  ==============
method                 init        objective    ranking  bias corr  search range
=====================  ==========  ===========  =======  =========  ==============
minmax                 max|x|      -            -        -          -
percentile             pct(|x|)    -            -        -          -
mse                    max|x|      output MSE   -        -          [0.5, 1.2]
easyquant              max|x|      cosine       -        -          [0.5, 2.0]
liu2021-sim            max|x|      Pearson      -        -          [0.5, 1.2]
liu2021-sim+rank       max|x|      Pearson      yes      -          [0.5, 1.2]
liu2021-sim+bc         max|x|      Pearson      -        yes        [0.5, 1.2]
liu2021                max|x|      Pearson      yes      yes        [0.5, 1.2]
mptq, mptq-sqb/-optm   max|x|      Pearson      yes      yes        [0.5, 1.2]
ptq4vit                max|x|      Hessian      -        -          [0.01, 1.2]
repq-vit               max|x|      output MSE   -        -          [0.5, 1.2]
=====================  ==========  ===========  =======  =========  ==============

The last five also change quantizers and fold transforms (SQ-b, OPT-m, twin uniform, RepQ
reparameterisation, log-sqrt(2)); which ones is in :mod:`vitq.methods.extended`, and its flags
(``sqb``, ``optm``, ``optm_softmax``, ``fully_quantized``, ...) compose with every method.

EasyQuant (Wu et al. 2020) searches scales in [0.5, 2] x the max scale with cosine similarity,
alternating weights and activations; Liu et al. fix alpha=0.5, beta=1.2 (Sec. 4).
"""

from vitq.methods.recipes import METHODS, MethodSpec, method_names, resolve_method

__all__ = ["METHODS", "MethodSpec", "method_names", "resolve_method"]
