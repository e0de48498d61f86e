"""The device half of decoding: the same speculative step as the readable reference beside it
(``sdd_edu/decoding/drafters.py``, ``tree.py``, ``speculative.py``), written as tensor operations of
fixed shapes, so that a step runs on the device with one read back to the host."""
