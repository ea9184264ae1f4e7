"""Storage: the HDF5 feature cache and the files around it (no torch, h5py on first use).

=================  ==================================================================
``keys``           content keys of image bytes, configuration ids
``journal``        crash safety and locking of a cache file (redo journal, ``flock``)
``h5store``        the HDF5 layout: open, check, group state, provenance, row reads
``access``         one locked read or one journaled transaction on a cache file
``cache``          :class:`FeatureCache`: lookup, contains, write, failures, export, drop
``cache_tools``    whole-file operations: merge, info, describe
``filekinds``      what a file is from its first bytes (for errors about misplaced files)
=================  ==================================================================
"""
