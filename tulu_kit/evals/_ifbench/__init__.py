"""allenai/IFBench checkers, vendored (see VENDORED.md); imported by tulu_kit.evals.ifbench."""
