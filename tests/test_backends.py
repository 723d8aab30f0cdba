"""Every backend the supervisor can be given implements the whole `nstd.daemon.backend`
protocol, with the protocol's parameters: the supervisor calls each method directly."""

from __future__ import annotations

import inspect

import pytest

from nstd.cluster.backend import ClusterWorker, RayBackend
from nstd.daemon.backend import Backend, WorkerHandle
from nstd.daemon.inline import InlineBackend, InlineWorker
from nstd.daemon.pool import ProcessBackend, WorkerProcess


def methods(protocol: type) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(value) for name, value in vars(protocol).items()
            if callable(value) and not name.startswith("_")}


def check(cls: type, protocol: type) -> None:
    wanted = methods(protocol)
    assert wanted, f"{protocol.__name__} lists no methods"
    for name, signature in wanted.items():
        method = getattr(cls, name, None)
        assert callable(method), f"{cls.__name__} lacks {name}()"
        got = [(p.name, p.kind) for p in inspect.signature(method).parameters.values()]
        want = [(p.name, p.kind) for p in signature.parameters.values()]
        assert got == want, f"{cls.__name__}.{name}{inspect.signature(method)}"


@pytest.mark.parametrize("cls", [ProcessBackend, InlineBackend, RayBackend])
def test_each_backend_has_every_backend_method(cls: type) -> None:
    check(cls, Backend)


@pytest.mark.parametrize("cls", [WorkerProcess, InlineWorker, ClusterWorker])
def test_each_worker_handle_has_every_handle_method_and_a_pid(cls: type) -> None:
    check(cls, WorkerHandle)
    assert "self.pid" in inspect.getsource(cls.__init__)


def test_the_process_and_inline_backends_plan_nothing_themselves() -> None:
    assert InlineBackend(object()).plans() is None
    assert ProcessBackend.plans(object.__new__(ProcessBackend)) is None
