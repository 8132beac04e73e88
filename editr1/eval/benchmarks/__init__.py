"""The public editing benchmarks (ImgEdit-Bench, GEdit-Bench): read a local copy in its published layout,
generate the edits, judge them per protocol with an MLLM, aggregate exactly as the benchmarks do."""
