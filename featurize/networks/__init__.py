"""Networks: pretrained backbones, truncated at their layers, made fast for one device.

==================  =================================================================
``checkpoints``     what every backbone family shares: the ``Backbone`` record,
                    checkpoint files, the seeded random initialisation
``backbones``       the registry, :func:`load_backbone`, :func:`available_backbones`
``timm_backbones``  ``timm:<name>`` backbones
``downloads``       :func:`download_weights`: the explicit way to fetch weights
``layers``          layer names and shapes, :func:`default_layers`,
                    :class:`TruncatedNet` (the one way to truncate a network)
``pooling``         :func:`pool`: a layer output to one vector per image
``hardware``        the device (:func:`resolve_device`), whether the CPU computes bf16
``runtimes``        which engine and precision run where (:func:`auto_candidates`,
                    :func:`resolve_precision`, :func:`build_engine`,
                    :func:`engine_numerics`)
``engines``         the engines themselves (eager-equivalent torch, ONNX Runtime,
                    OpenVINO) and how each is built
==================  =================================================================
"""
