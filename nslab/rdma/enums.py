"""Verbs constants with pyverbs' names and values (`import nslab.rdma.enums as e`
reads like `import pyverbs.enums as e`), plus RoCEv2 wire constants."""

from __future__ import annotations

# ibv_access_flags
IBV_ACCESS_LOCAL_WRITE = 1
IBV_ACCESS_REMOTE_WRITE = 2
IBV_ACCESS_REMOTE_READ = 4
IBV_ACCESS_REMOTE_ATOMIC = 8

# ibv_qp_type
IBV_QPT_RC = 2
IBV_QPT_UC = 3
IBV_QPT_UD = 4

# ibv_qp_state
IBV_QPS_RESET = 0
IBV_QPS_INIT = 1
IBV_QPS_RTR = 2
IBV_QPS_RTS = 3
IBV_QPS_SQD = 4
IBV_QPS_SQE = 5
IBV_QPS_ERR = 6

# ibv_mtu
IBV_MTU_256 = 1
IBV_MTU_512 = 2
IBV_MTU_1024 = 3
IBV_MTU_2048 = 4
IBV_MTU_4096 = 5

# ibv_wr_opcode
IBV_WR_RDMA_WRITE = 0
IBV_WR_RDMA_WRITE_WITH_IMM = 1
IBV_WR_SEND = 2
IBV_WR_SEND_WITH_IMM = 3
IBV_WR_RDMA_READ = 4
IBV_WR_ATOMIC_CMP_AND_SWP = 5
IBV_WR_ATOMIC_FETCH_AND_ADD = 6

# ibv_send_flags
IBV_SEND_FENCE = 1
IBV_SEND_SIGNALED = 2
IBV_SEND_SOLICITED = 4
IBV_SEND_INLINE = 8

# ibv_wc_opcode
IBV_WC_SEND = 0
IBV_WC_RDMA_WRITE = 1
IBV_WC_RDMA_READ = 2
IBV_WC_COMP_SWAP = 3
IBV_WC_FETCH_ADD = 4
IBV_WC_RECV = 128
IBV_WC_RECV_RDMA_WITH_IMM = 129

# ibv_wc_status
IBV_WC_SUCCESS = 0
IBV_WC_LOC_LEN_ERR = 1
IBV_WC_LOC_QP_OP_ERR = 2
IBV_WC_LOC_EEC_OP_ERR = 3
IBV_WC_LOC_PROT_ERR = 4
IBV_WC_WR_FLUSH_ERR = 5
IBV_WC_MW_BIND_ERR = 6
IBV_WC_BAD_RESP_ERR = 7
IBV_WC_LOC_ACCESS_ERR = 8
IBV_WC_REM_INV_REQ_ERR = 9
IBV_WC_REM_ACCESS_ERR = 10
IBV_WC_REM_OP_ERR = 11
IBV_WC_RETRY_EXC_ERR = 12
IBV_WC_RNR_RETRY_EXC_ERR = 13
IBV_WC_GENERAL_ERR = 21

# ibv_wc_flags
IBV_WC_WITH_IMM = 2

WC_STATUS_NAMES = {
    v: k
    for k, v in dict(globals()).items()
    if k.startswith("IBV_WC_") and k.endswith(("_ERR", "SUCCESS"))
}
QP_STATE_NAMES = {v: k for k, v in dict(globals()).items() if k.startswith("IBV_QPS_")}

MTU_BYTES = {
    IBV_MTU_256: 256,
    IBV_MTU_512: 512,
    IBV_MTU_1024: 1024,
    IBV_MTU_2048: 2048,
    IBV_MTU_4096: 4096,
}


def mtu_enum(nbytes: int) -> int:
    """The ibv_mtu value for a path MTU in bytes (256..4096, powers of two)."""
    for k, v in MTU_BYTES.items():
        if v == nbytes:
            return k
    raise ValueError(f"path MTU {nbytes} is not one of 256, 512, 1024, 2048, 4096")


def wc_status_str(status: int) -> str:
    """Like ibv_wc_status_str(): a readable name for a completion status."""
    return WC_STATUS_NAMES.get(status, f"status {status}")
