"""ONNX export of ATFNN (installed as ``atfnn_fast.export``).

Not implemented yet: ``export_onnx`` and ``validate_onnx`` arrive with the export issue.
This package exists now so that the installed layout (SPEC section 1) is fixed and tested.
"""

__all__: list[str] = []
