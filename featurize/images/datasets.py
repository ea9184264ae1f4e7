"""Sample images that ship inside the package, so the main job runs on any machine.

Like ``sklearn.datasets`` and ``skimage.data``: nothing is downloaded, the images are files in
the installed package, and :func:`sample_images` says where they are.
"""

from __future__ import annotations

from pathlib import Path

from sklearn.utils import Bunch

__all__ = ["sample_images"]

#: Package data of ``featurize`` (pyproject.toml), beside this sub-package.
_ROOT = Path(__file__).resolve().parents[1] / "sample_data" / "clothing4"


def sample_images() -> Bunch:
    """The bundled 4-class clothing sample (168 JPEG files, CC0 1.0).

    Returns
    -------
    sklearn.utils.Bunch
        ``train`` and ``test``: :class:`pathlib.Path` of the two folder-per-class trees (pass
        them to :func:`featurize.load_image_folder` or ``featurize train``); ``target_names``:
        the class names in sorted order; ``license``: the path of the licence file; ``DESCR``:
        a description of the sample.

    Raises
    ------
    FileNotFoundError
        When the package was installed without its data files.

    Examples
    --------
    >>> from featurize import load_image_folder
    >>> from featurize.images.datasets import sample_images
    >>> sample = sample_images()
    >>> train = load_image_folder(sample.train)
    >>> len(train.paths), train.target_names
    (120, ['hat', 'pants', 'shoes', 't-shirt'])
    """
    train, test = _ROOT / "train", _ROOT / "test"
    if not (train.is_dir() and test.is_dir()):
        raise FileNotFoundError(
            f"The sample images are missing from {_ROOT}: this installation of featurize was "
            "built without its package data. Reinstall it from the source tree "
            "(pip install -e . or pip install .).")
    return Bunch(train=train, test=test,
                 target_names=sorted(p.name for p in train.iterdir() if p.is_dir()),
                 license=_ROOT / "LICENSE",
                 DESCR=(_ROOT / "README.txt").read_text(encoding="utf-8"))
