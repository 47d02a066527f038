// A pass-through NF: every frame from $a goes out of $b and back, counted.
// Run: python -m nslab.nf nslab/nf/configs/passthrough.click a=eth0 b=eth1
FromDevice($a) -> Counter(a_to_b) -> ToDevice($b);
FromDevice($b) -> Counter(b_to_a) -> ToDevice($a);
