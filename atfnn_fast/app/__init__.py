"""The application layer: the ``atfnn-fast`` command line and what only it uses (corpus
manifests, training, evaluation, batch prediction, the demo, the synthetic corpus, metrics
and plots). It builds on the core (``atfnn_fast`` and its ``kernels`` and ``export``
subpackages), which never imports it (docs/design.md#layers)."""
