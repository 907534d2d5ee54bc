/* DPDK's fast path is `static inline` (and some of it macros): these one-line functions give
 * each a linkable symbol so Rust can call it. Keep them trivial; all logic lives in Rust. */
#include "wrapper.h"

uint16_t eg_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{ return rte_eth_rx_burst(port, queue, pkts, n); }
uint16_t eg_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{ return rte_eth_tx_burst(port, queue, pkts, n); }
struct rte_mbuf *eg_pktmbuf_alloc(struct rte_mempool *mp) { return rte_pktmbuf_alloc(mp); }
void eg_pktmbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }
void eg_pktmbuf_free_bulk(struct rte_mbuf **m, unsigned int n) { rte_pktmbuf_free_bulk(m, n); }
uint16_t eg_mbuf_nb_segs(const struct rte_mbuf *m) { return m->nb_segs; }
char *eg_pktmbuf_append(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_append(m, len); }
void eg_mbuf_refcnt_update(struct rte_mbuf *m, int16_t v) { rte_mbuf_refcnt_update(m, v); }
uint16_t eg_mbuf_refcnt_read(const struct rte_mbuf *m) { return rte_mbuf_refcnt_read(m); }
unsigned int eg_mempool_avail_count(const struct rte_mempool *mp) { return rte_mempool_avail_count(mp); }
unsigned int eg_mempool_size(const struct rte_mempool *mp) { return mp->size; }
uint64_t eg_rdtsc(void) { return rte_rdtsc(); }
int eg_errno(void) { return rte_errno; }
unsigned int eg_lcore_id(void) { return rte_lcore_id(); }
int eg_link_up(uint16_t port)
{
	struct rte_eth_link link;
	if (rte_eth_link_get_nowait(port, &link) != 0)
		return 0;
	return link.link_status == RTE_ETH_LINK_UP;
}
