"""The contract: plain types that routines, result builders and the node share.

:class:`~node.contract.volume.Volume` (the input, built and checked once),
:class:`~node.contract.plugin.InferencePlugin` with its
:class:`~node.contract.plugin.Prediction` (the output), the result templates and result
kinds. This layer imports nothing of the node except :mod:`node.errors`.
"""
