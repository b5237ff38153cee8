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
=====================  ==========  ===========  =======  =========  ==============

EasyQuant (Wu et al. 2020) searches scales in [0.5, 2] x the max scale with cosine similarity,
alternating weights and activations; Liu et al. fix alpha=0.5, beta=1.2 (Sec. 4).
"""

from vitq.methods.recipes import METHODS, MethodSpec, method_names, resolve_method

__all__ = ["METHODS", "MethodSpec", "method_names", "resolve_method"]
