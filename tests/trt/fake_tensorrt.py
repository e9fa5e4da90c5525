"""A FAKE of the TensorRT Python API: exactly the calls vaedeploy makes (vaedeploy/deploy/trt_build.py and
vaedeploy/runtime/backends/tensorrt.py), nothing else. It is not TensorRT and proves nothing about TensorRT's own
behaviour; it proves that our code makes the documented calls, in a legal order, with the shapes and flags meant.

- Every object refuses an attribute it does not know, read or written, with an AttributeError naming the fake, so a
  call the code makes that is not listed here (a misspelt method, an API of another version) fails the test.
- Every call is recorded in ``module.calls`` as ``(name, args)``.
- ``make(name, version)`` gives a fresh module: ``tensorrt`` 10.x (FP16 flag, STRONGLY_TYPED creation flag, timing
  cache), ``tensorrt`` 11.x (no FP16 flag: strongly typed always), ``tensorrt_rtx`` 1.x (no timing cache, the
  REQUIRE_USER_ALLOCATION flag) -- the differences the TensorRT 11 migration guide and TensorRT-RTX 1.2 notes state.
- A plan is JSON (what was built from which ONNX file); an engine "runs" the ONNX graph with ONNX Runtime on the CPU,
  reading its inputs from and writing its outputs to the raw addresses bound with ``set_tensor_address`` (torch CPU
  tensors' ``data_ptr()``), so results show whether tensors were bound by name and shaped right.
- ``module.faults`` switches on failures: ``parse`` (the parser refuses), ``build`` (no plan), ``offset`` (added to
  every output, for validation that must fail).
"""
from __future__ import annotations

import ctypes
import importlib.machinery
import json
import types

import numpy as np

PLAN_TAG = "fake tensorrt plan"
ONNX_TYPES = {1: "FLOAT", 10: "HALF", 7: "INT64", 6: "INT32"}
NUMPY = {"FLOAT": np.float32, "HALF": np.float16, "INT64": np.int64, "INT32": np.int32}


def _unknown(owner: str, name: str) -> AttributeError:
    return AttributeError(f"fake tensorrt: {owner}.{name} is not one of the TensorRT calls the fake knows "
                          "(tests/trt/fake_tensorrt.py); add it only with the documented TensorRT API it mirrors")


class Strict:
    """Reading or writing an attribute the class does not declare raises (``settable``: the ones code may set)."""

    settable: tuple = ()

    def __getattr__(self, name):
        raise _unknown(type(self).__name__, name)

    def __setattr__(self, name, value):
        if not name.startswith("_") and name not in self.settable:
            raise _unknown(type(self).__name__, name)
        object.__setattr__(self, name, value)


class Value:
    def __init__(self, owner: str, name: str, number: int):
        self.name, self.owner, self.number = name, owner, number

    def __int__(self):
        return self.number

    def __repr__(self):
        return f"{self.owner}.{self.name}"


class Enum(Strict):
    def __init__(self, owner: str, names):
        self._owner = owner
        for i, name in enumerate(names):
            object.__setattr__(self, name, Value(owner, name, i))

    def __getattr__(self, name):
        raise _unknown(self._owner, name)


class HostMemory(Strict):
    def __init__(self, data: bytes):
        self._data = data

    def __bytes__(self):
        return self._data


def make(name: str = "tensorrt", version: str = "10.13.0"):
    """A fresh fake module named ``name`` at ``version``, its own call record and faults."""
    major = int(version.split(".")[0])
    trt = FakeModule(name)
    trt.__version__ = version
    trt.__spec__ = importlib.machinery.ModuleSpec(name, None)
    trt.calls, trt.faults = [], {}
    strong_only, rtx = name == "tensorrt_rtx" or major >= 11, name == "tensorrt_rtx"
    flags = ["TF32"] if not rtx else []
    flags += [] if strong_only else ["FP16"]
    flags += ["REQUIRE_USER_ALLOCATION"] if rtx else []
    trt.BuilderFlag = Enum("BuilderFlag", flags)
    trt.NetworkDefinitionCreationFlag = Enum("NetworkDefinitionCreationFlag", ["STRONGLY_TYPED"])
    trt.MemoryPoolType = Enum("MemoryPoolType", ["WORKSPACE"])
    trt.TensorIOMode = Enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    trt.ExecutionContextAllocationStrategy = Enum("ExecutionContextAllocationStrategy",
                                                  ["STATIC", "ON_PROFILE_CHANGE", "USER_MANAGED"])
    trt.DataType = Enum("DataType", list(NUMPY))

    def record(call: str, *args):
        trt.calls.append((call, args))

    class ILogger:
        Severity = Enum("ILogger.Severity", ["INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"])

        def __init__(self):
            record("ILogger.__init__")

    class IProgressMonitor:
        def __init__(self):
            record("IProgressMonitor.__init__")

    def log_error(logger, message):
        logger.log(ILogger.Severity.ERROR, message)

    class Network(Strict):
        def __init__(self, flags: int):
            self._strong = strong_only or bool(flags & (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
            self._inputs, self._outputs, self._onnx = [], [], None

    class ParserError(Strict):
        def __init__(self, text):
            self._text = text

        def desc(self):
            return self._text

    class OnnxParser(Strict):
        def __init__(self, network, logger):
            record("OnnxParser", network)
            self._network, self._logger, self._errors = network, logger, []

        def parse_from_file(self, path):
            import onnx

            record("OnnxParser.parse_from_file", path)
            if "parse" in trt.faults:
                self._errors.append(ParserError(trt.faults["parse"]))
                return False
            model = onnx.load(path, load_external_data=False)

            def tensors(values):
                return [{"name": v.name, "dtype": ONNX_TYPES[v.type.tensor_type.elem_type],
                         "shape": [d.dim_value if d.HasField("dim_value") else -1
                                   for d in v.type.tensor_type.shape.dim]} for v in values]

            initializers = {i.name for i in model.graph.initializer}
            self._network._inputs = tensors(v for v in model.graph.input if v.name not in initializers)
            self._network._outputs = tensors(model.graph.output)
            self._network._onnx = str(path)
            return True

        @property
        def num_errors(self):
            return len(self._errors)

        def get_error(self, i):
            return self._errors[i]

    class Profile(Strict):
        def __init__(self):
            self._shapes = {}

        def set_shape(self, name, min, opt, max):  # noqa: A002 -- TensorRT's keyword names
            record("IOptimizationProfile.set_shape", name, tuple(min), tuple(opt), tuple(max))
            self._shapes[name] = [list(min), list(opt), list(max)]

    class TimingCache(Strict):
        def __init__(self, data: bytes):
            doc = json.loads(data) if data else {"module": name, "version": version, "builds": 0}
            self._doc, self._fits = doc, (doc["module"], doc["version"]) == (name, version)

        def serialize(self):
            return HostMemory(json.dumps(self._doc).encode())

    class BuilderConfig(Strict):
        settable = ("builder_optimization_level", "progress_monitor")

        def __init__(self):
            self._flags = {"TF32"} if not rtx else set()
            self._profiles, self._pool, self._cache = [], None, None
            object.__setattr__(self, "builder_optimization_level", 3)
            object.__setattr__(self, "progress_monitor", None)

        def set_flag(self, flag):
            record("IBuilderConfig.set_flag", flag.name)
            self._flags.add(flag.name)

        def clear_flag(self, flag):
            record("IBuilderConfig.clear_flag", flag.name)
            self._flags.discard(flag.name)

        def set_memory_pool_limit(self, pool, size):
            record("IBuilderConfig.set_memory_pool_limit", pool.name, size)
            self._pool = size

        def add_optimization_profile(self, profile):
            record("IBuilderConfig.add_optimization_profile", dict(profile._shapes))
            self._profiles.append(profile)
            return len(self._profiles) - 1

    class TimedBuilderConfig(BuilderConfig):
        def create_timing_cache(self, data):
            record("IBuilderConfig.create_timing_cache", bytes(data))
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            record("IBuilderConfig.set_timing_cache", cache._fits, ignore_mismatch)
            if not cache._fits:
                return False
            self._cache = cache
            return True

        def get_timing_cache(self):
            return self._cache

    class Builder(Strict):
        def __init__(self, logger):
            record("Builder", logger)
            self._logger = logger

        def create_network(self, flags):
            record("Builder.create_network", flags)
            return Network(flags)

        def create_builder_config(self):
            return BuilderConfig() if rtx else TimedBuilderConfig()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            record("Builder.build_serialized_network", sorted(config._flags), config.builder_optimization_level,
                   config._pool)
            problems = []
            if not config._profiles:
                problems.append("a network with dynamic inputs needs an optimization profile")
            for profile in config._profiles:
                for tensor in network._inputs:
                    if tensor["name"] not in profile._shapes:
                        problems.append(f"no profile shape for input {tensor['name']}")
            if network._strong and "FP16" in config._flags:
                problems.append("the FP16 flag is not allowed on a strongly typed network")
            if "build" in trt.faults:
                problems.append(trt.faults["build"])
            monitor = config.progress_monitor
            if monitor is not None:
                monitor.phase_start("Building engine", None, len(config._profiles))
                for step in range(len(config._profiles)):
                    monitor.step_complete("Building engine", step)
                monitor.phase_finish("Building engine")
            if problems:
                for problem in problems:
                    log_error(self._logger, problem)
                return None
            if config._cache is not None:
                config._cache._doc["builds"] += 1
            names = [t["name"] for t in network._inputs]
            plan = {"tag": PLAN_TAG, "module": name, "version": version, "onnx": network._onnx,
                    "inputs": network._inputs, "outputs": network._outputs, "strongly_typed": network._strong,
                    "flags": sorted(config._flags), "opt_level": config.builder_optimization_level,
                    "profiles": [[p._shapes[n] for n in names] for p in config._profiles],
                    "device_memory": 4096 * len(config._profiles)}
            return HostMemory(json.dumps(plan).encode())

    class Context(Strict):
        def __init__(self, engine, strategy):
            self._engine, self._strategy = engine, strategy
            self._memory, self._profile, self._shapes, self._addresses = None, 0, {}, {}

        def set_device_memory(self, address, size):
            record("IExecutionContext.set_device_memory", address, size)
            self._memory = (address, size)

        def set_optimization_profile_async(self, index, stream):
            record("IExecutionContext.set_optimization_profile_async", index, stream)
            if not 0 <= index < len(self._engine._plan["profiles"]):
                return False
            self._profile, self._shapes = index, {}
            return True

        def set_input_shape(self, tensor, shape):
            record("IExecutionContext.set_input_shape", tensor, tuple(shape))
            names = [t["name"] for t in self._engine._plan["inputs"]]
            low, _, high = self._engine._plan["profiles"][self._profile][names.index(tensor)]
            if not all(lo <= s <= hi for lo, s, hi in zip(low, shape, high)):
                log_error(self._engine._logger, f"{tensor}: shape {tuple(shape)} outside profile {self._profile}")
                return False
            self._shapes[tensor] = tuple(shape)
            return True

        def set_tensor_address(self, tensor, address):
            record("IExecutionContext.set_tensor_address", tensor, address)
            self._addresses[tensor] = address
            return True

        def execute_async_v3(self, stream_handle):
            plan = self._engine._plan
            record("IExecutionContext.execute_async_v3", stream_handle, dict(self._shapes))
            missing = [t["name"] for t in plan["inputs"] + plan["outputs"] if t["name"] not in self._addresses]
            missing += [f"the shape of {t['name']}" for t in plan["inputs"] if t["name"] not in self._shapes]
            if self._strategy.name == "USER_MANAGED" and (self._memory is None or
                                                          self._memory[1] < plan["device_memory"]):
                missing.append("device memory of device_memory_size_v2 bytes")
            if missing:
                log_error(self._engine._logger, f"execute_async_v3 without {', '.join(missing)}")
                return False
            feed = {t["name"]: _view(self._addresses[t["name"]], self._shapes[t["name"]], t["dtype"]).copy()
                    for t in plan["inputs"]}
            for tensor, value in zip((t["name"] for t in plan["outputs"]), self._engine._session().run(None, feed)):
                value = value + trt.faults.get("offset", 0)
                _view(self._addresses[tensor], value.shape, _dtype_name(value.dtype))[...] = value
            return True

    class Engine(Strict):
        def __init__(self, plan, logger):
            self._plan, self._logger, self._ort = plan, logger, None
            # the order TensorRT lists tensors in is its own: here outputs first, inputs reversed
            self._order = [t["name"] for t in plan["outputs"]] + [t["name"] for t in reversed(plan["inputs"])]

        def _tensor(self, tensor):
            for t in self._plan["inputs"] + self._plan["outputs"]:
                if t["name"] == tensor:
                    return t
            raise KeyError(f"fake tensorrt: the engine has no tensor {tensor!r}")

        def _session(self):
            if self._ort is None:
                import onnxruntime

                self._ort = onnxruntime.InferenceSession(self._plan["onnx"], providers=["CPUExecutionProvider"])
            return self._ort

        @property
        def num_io_tensors(self):
            return len(self._order)

        def get_tensor_name(self, index):
            return self._order[index]

        def get_tensor_mode(self, tensor):
            inputs = [t["name"] for t in self._plan["inputs"]]
            return trt.TensorIOMode.INPUT if tensor in inputs else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, tensor):
            return getattr(trt.DataType, self._tensor(tensor)["dtype"])

        @property
        def num_optimization_profiles(self):
            return len(self._plan["profiles"])

        def get_tensor_profile_shape(self, tensor, profile):
            names = [t["name"] for t in self._plan["inputs"]]
            return [tuple(s) for s in self._plan["profiles"][profile][names.index(tensor)]]

        @property
        def device_memory_size_v2(self):
            return self._plan["device_memory"]

        def create_execution_context(self, strategy):
            record("ICudaEngine.create_execution_context", strategy.name)
            return Context(self, strategy)

    class Runtime(Strict):
        def __init__(self, logger):
            record("Runtime", logger)
            self._logger = logger

        def deserialize_cuda_engine(self, data):
            record("Runtime.deserialize_cuda_engine", len(data))
            try:
                plan = json.loads(bytes(data))
                assert plan["tag"] == PLAN_TAG
            except (ValueError, AssertionError, KeyError, TypeError):
                log_error(self._logger, "the plan's magic tag does not match (not a serialized engine)")
                return None
            if (plan["module"], plan["version"]) != (name, version):
                log_error(self._logger, f"Version tag does not match: built by {plan['module']} {plan['version']}")
                return None
            return Engine(plan, self._logger)

    for cls in (ILogger, IProgressMonitor, Builder, OnnxParser, Runtime):
        setattr(trt, cls.__name__, cls)
    return trt


def _dtype_name(dtype) -> str:
    return {np.dtype(v): k for k, v in NUMPY.items()}[np.dtype(dtype)]


def _view(address: int, shape, dtype: str) -> np.ndarray:
    """The array of ``shape`` at a raw host address (a torch CPU tensor's data_ptr)."""
    count = int(np.prod(shape))
    itemsize = np.dtype(NUMPY[dtype]).itemsize
    raw = (ctypes.c_uint8 * (count * itemsize)).from_address(address)
    return np.ctypeslib.as_array(raw).view(NUMPY[dtype]).reshape(shape)


class FakeModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise _unknown(self.__name__, name)


def calls(trt, name: str) -> list[tuple]:
    """The arguments of every recorded call of ``name``."""
    return [args for call, args in trt.calls if call == name]
