/* Headers bindgen reads, and the C helpers that make DPDK's static inline fast path callable. */
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_launch.h>
#include <rte_cycles.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_bus_vdev.h>

uint16_t eg_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t eg_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
struct rte_mbuf *eg_pktmbuf_alloc(struct rte_mempool *mp);
void eg_pktmbuf_free(struct rte_mbuf *m);
void eg_pktmbuf_free_bulk(struct rte_mbuf **m, unsigned int n);
uint16_t eg_mbuf_nb_segs(const struct rte_mbuf *m);
char *eg_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
void eg_mbuf_refcnt_update(struct rte_mbuf *m, int16_t v);
uint16_t eg_mbuf_refcnt_read(const struct rte_mbuf *m);
unsigned int eg_mempool_avail_count(const struct rte_mempool *mp);
unsigned int eg_mempool_size(const struct rte_mempool *mp);
uint64_t eg_rdtsc(void);
int eg_errno(void);
unsigned int eg_lcore_id(void);
int eg_link_up(uint16_t port);
