from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: on 2 shared cores it is several times faster than two threads fighting, and
    it matches the single-threaded training subprocesses that some tests compare against."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def mtcnn():
    """facenet-pytorch 2.6.0's MTCNN networks with their trained weights: ``mtcnn("pnet" | "rnet" | "onet")`` gives a
    fresh eval-mode copy of facenet-pytorch's own ``PNet`` / ``RNet`` / ``ONet`` class, weights read from the
    package's ``data/<name>.pt`` with ``torch.load(weights_only=True)``.

    Importing ``facenet_pytorch`` imports torchvision (``transforms.functional``, ``ops.boxes.batched_nms``, used
    only by its detection pipeline) and requests (used only to download other weights). torchvision does not load
    with the CPU torch here, and neither is a dependency of fcnkit, so the import runs with minimal stand-ins for
    exactly those names in ``sys.modules``; they raise if ever called, and are removed again right after the
    import. Skips when facenet-pytorch is not installed (``make install`` adds it with ``--no-deps``).
    """
    import importlib.util
    import sys
    import types
    from pathlib import Path

    if importlib.util.find_spec("facenet_pytorch") is None:
        pytest.skip("facenet-pytorch 2.6.0 is not installed (make install adds it with --no-deps)")

    def unavailable(*args, **kwargs):
        raise NotImplementedError("a stand-in of the fcnkit tests: facenet-pytorch's detection pipeline is not run")

    stand_ins = {
        "torchvision": {}, "torchvision.transforms": {}, "torchvision.ops": {},
        "torchvision.transforms.functional": {}, "torchvision.ops.boxes": {"batched_nms": unavailable},
        "requests": {}, "requests.adapters": {"HTTPAdapter": type("HTTPAdapter", (), {"__init__": unavailable})},
    }
    saved = {name: sys.modules.get(name) for name in stand_ins}
    try:
        for name, attributes in stand_ins.items():
            if saved[name] is None:  # a real, loadable package is used as it is
                module = types.ModuleType(name)
                module.__dict__.update(attributes)
                sys.modules[name] = module
        for name in stand_ins:  # `from torchvision.transforms import functional` reads the parent's attribute
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(sys.modules[parent], child, sys.modules[name])
        from facenet_pytorch.models import mtcnn as module
    finally:
        for name, before in saved.items():
            if before is None:
                sys.modules.pop(name, None)
    data = Path(module.__file__).resolve().parent.parent / "data"
    classes = {"pnet": module.PNet, "rnet": module.RNet, "onet": module.ONet}

    def load(name: str) -> torch.nn.Module:
        net = classes[name](pretrained=False)
        net.load_state_dict(torch.load(data / f"{name}.pt", weights_only=True))
        return net.eval()

    return load


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small fcnkit checkpoint (encoder_decoder ×0.125, 3 classes, seed 0) for the CLI fault tests; a test module
    that needs another model defines its own ``checkpoint`` fixture, which takes precedence."""
    import fcnkit
    from fcnkit.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = fcnkit.build_model("encoder_decoder", num_classes=3, width=0.125)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, model=model, class_names=["bg", "a", "b"])
    return path
