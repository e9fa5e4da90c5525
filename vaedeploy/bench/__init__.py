"""`vaedeploy bench`: the latency benchmark, modelled on trtexec and perf_analyzer (docs/benchmarks.md).

- ``loop.py``: cases interleaved in rounds, timed in windows until perf_analyzer's stability rule holds;
  ``stats.py``: percentiles, the rule, a row's figures.
- ``floor.py``: the FLOPs and bytes of each op's graphs (onnx-tool) over the machine's measured rates;
  ``gpu.py``: CUDA-event device time, enqueue time, the launch floor.
- ``local.py``: the cases of bundles in this process; ``server.py``: the cases of an Open Inference Protocol server.
- ``run.py``: a whole run and its JSON document; ``output.py``: the table, the JSON, the plots, ``--compare``;
  ``environment.py``: the machine and versions every result carries; ``command.py``: the CLI options.

The Python API is ``run.measure_bundles`` and ``run.measure_server`` (each returns the JSON document) and
``output.table`` / ``output.write``; nothing here is imported until the bench is used.
"""
