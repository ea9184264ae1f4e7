"""Fine-tuning: a pretrained network trained further on a folder of images.

==============  =======================================================================
``finetune``    :func:`finetune`: a linear probe on the frozen network, then the last
                stages and the classifier; :class:`FinetuneResult`
``training``    the training run: epochs, evaluation, best epoch kept
``data``        its data: classes, the stratified validation split, seeded
                augmentation, batches decoded by a thread pool
``checkpoint``  the checkpoint: its keys, the atomic writer,
                :func:`is_finetuned_checkpoint`
==============  =======================================================================
"""
