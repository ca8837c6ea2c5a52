/*
 * server: the evhttp front. Validates and routes every request before
 * anything goes upstream; only configured registries are ever contacted.
 */
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <sys/queue.h>
#include <errno.h>
#include <signal.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adminapi.h"
#include "blob.h"
#include "cache.h"
#include "classify.h"
#include "confdiff.h"
#include "config.h"
#include "client.h"
#include "guard.h"
#include "incident.h"
#include "log.h"
#include "manifest.h"
#include "metrics.h"
#include "oci.h"
#include "registry.h"
#include "relay.h"
#include "reply.h"
#include "server.h"
#include "upstream.h"

/*
 * Request line and headers: what a connection may hold while its head
 * arrives. Beyond, evhttp answers 400 and closes; below, guard.h answers
 * 414 and 431 at its own, smaller limits.
 */
#define SERVER_MAX_HEADERS	(32 * 1024)
#define SERVER_MAX_BODY		4096		/* the pull API takes none */
/*
 * Bytes one write event may send. libevent's default, 16 KiB, costs a
 * sendfile call and an epoll round per 16 KiB of a cached layer.
 */
#define SERVER_MAX_WRITE	(1024 * 1024)

/*
 * Who a listener serves. Each has its own evhttp and guard: what its
 * clients must carry, and what they may ask.
 */
enum server_role {
	SERVER_CLIENTS,	/* containerd: the pull API and the probes */
	SERVER_PEERS,	/* the fleet's other nodes: pulls and the probes */
	SERVER_METRICS,	/* scrapers: /metrics and the probes, no credential */
	SERVER_ADMIN,	/* pullproxy cache, on a unix socket (adminapi.h) */
	SERVER_NROLES,
};

struct server_listener {
	struct server		*l_srv;
	enum server_role	 l_role;
	struct evhttp		*l_http;	/* NULL: not configured */
	struct evhttp_bound_socket *l_sock;	/* NULL: not accepting */
	struct guard		*l_guard;
};

/* A config loaded by a reload and the registries built from it. */
struct server_gen {
	TAILQ_ENTRY(server_gen)	 g_entry;
	struct server		*g_srv;
	struct config		*g_cfg;		/* NULL: the first, not ours */
	struct registry_set	*g_regs;
};

struct server {
	struct event_base	*s_base;
	const struct config	*s_cfg;		/* the first: listeners, cache */
	struct registry_set	*s_regs;	/* for new requests */
	char			*s_admin_path;	/* the socket, removed at exit */
	struct config		*s_own;		/* s_regs' config when reloaded */
	TAILQ_HEAD(, server_gen) s_retired;	/* still held by requests */
	struct server_listener	 s_lis[SERVER_NROLES];
	struct upstream		*s_up;
	struct cache		*s_cache;
	struct relay_ctx	*s_relays;
	struct blob_ctx		*s_blobs;
	struct manifest_ctx	*s_manifests;
	unsigned long		 s_nextid;
};

static const char *
server_method_name(enum evhttp_cmd_type cmd)
{
	switch (cmd) {
	case EVHTTP_REQ_GET:	return "GET";
	case EVHTTP_REQ_HEAD:	return "HEAD";
	case EVHTTP_REQ_POST:	return "POST";
	case EVHTTP_REQ_PUT:	return "PUT";
	case EVHTTP_REQ_DELETE:	return "DELETE";
	case EVHTTP_REQ_PATCH:	return "PATCH";
	case EVHTTP_REQ_OPTIONS: return "OPTIONS";
	default:		return "OTHER";
	}
}

/* A request the server answers itself: counted under its route's kind. */
static void
server_log(unsigned long id, const char *method, const char *uri,
    enum oci_route_kind kind, int status, size_t bytes,
    const struct timeval *t0)
{
	metrics_request(kind, status, METRICS_RESULT_NONE,
	    log_seconds_since(t0));
	log_request(id, method, uri != NULL ? uri : "-", NULL, NULL, status,
	    bytes, 0, t0);
}

static void
server_reply_error(struct evhttp_request *req, unsigned long id,
    enum oci_route_kind kind, enum oci_err err, const char *msg,
    const struct timeval *t0)
{
	int status = oci_err_status(err);
	const char *method = server_method_name(evhttp_request_get_command(req));
	char *uri = strdup(evhttp_request_get_uri(req));
	size_t n;

	n = reply_error(req, status, err, msg);	/* frees req */
	server_log(id, method, uri, kind, status, n, t0);
	free(uri);
}

/* The cache's size for /metrics, read when asked (in memory but a stat). */
static void
server_cache_usage(struct server *srv)
{
	struct metrics_usage u;
	struct cache_stats st;

	if (srv->s_cache == NULL || cache_stats(srv->s_cache, &st) != CACHE_OK)
		return;
	u.bytes = st.blob_bytes + st.manifest_bytes;
	u.budget = st.budget;
	u.blobs = st.blobs;
	u.manifests = st.manifests;
	u.evictions = st.evictions;
	metrics_cache_usage(&u);
}

/*
 * What an operator or kubelet probe asks, outside the registry API:
 * /metrics (not of peers), /healthz (the loop answers) and /readyz (the
 * cache is open and the server still accepts), GET or HEAD. Returns 0
 * for any other path.
 */
static int
server_ops(struct server_listener *lis, struct evhttp_request *req,
    const char *path)
{
	struct server *srv = lis->l_srv;
	const char *type = "text/plain; charset=utf-8";
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	struct evbuffer *body;
	int status = 200;

	if ((strcmp(path, "/metrics") != 0 || lis->l_role == SERVER_PEERS) &&
	    strcmp(path, "/healthz") != 0 && strcmp(path, "/readyz") != 0)
		return 0;
	if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
		reply_error(req, 405, OCI_ERR_METHOD, NULL);
		return 1;
	}
	if ((body = evbuffer_new()) == NULL) {
		evhttp_send_error(req, HTTP_INTERNAL, NULL);
		return 1;
	}
	if (strcmp(path, "/metrics") == 0) {
		type = "text/plain; version=0.0.4; charset=utf-8";
		server_cache_usage(srv);
		registry_set_sample(srv->s_regs);
		metrics_render(body);
	} else if (strcmp(path, "/readyz") == 0 &&
	    (srv->s_lis[SERVER_CLIENTS].l_sock == NULL ||
	    srv->s_cache == NULL)) {
		status = 503;
		evbuffer_add_printf(body, "not ready\n");
	} else
		evbuffer_add_printf(body, "ok\n");
	evhttp_add_header(evhttp_request_get_output_headers(req),
	    "Content-Type", type);
	evhttp_send_reply(req, status, status == 200 ? "OK" :
	    "Service Unavailable", body);
	evbuffer_free(body);
	return 1;
}

/* A host that looks like a typo of azurecr.io: say so on line o. */
static json_t *
server_typo(json_t *o, const char *host)
{
	if (o != NULL && classify_name_typo(host)) {
		json_object_set_new(o, "cause", json_string(
		    classify_cause_name(CLASSIFY_NAME_TYPO)));
		json_object_set_new(o, "hint", json_string(
		    classify_hint(CLASSIFY_NAME_TYPO)));
	}
	return o;
}

/* Typos in the configured names and URLs, before any request. */
static void
server_check_names(const struct config *cfg)
{
	const struct config_registry *reg;
	char host[256];
	size_t i;

	for (i = 0; i < cfg->nregistries; i++) {
		reg = &cfg->registries[i];
		/* The URL's host[:port], after "scheme://". */
		snprintf(host, sizeof(host), "%.*s",
		    (int)strcspn(strstr(reg->url, "://") + 3, "/"),
		    strstr(reg->url, "://") + 3);
		if (classify_name_typo(reg->name) || classify_name_typo(host))
			log_event(LOG_LEVEL_WARN, "registry name looks wrong",
			    server_typo(json_pack("{s:s,s:s}", "registry",
			    reg->name, "url", reg->url),
			    classify_name_typo(reg->name) ? reg->name : host));
	}
}

/*
 * Framing a proxy in front could read differently, or too large: refused
 * and the connection closed. Then the client token, when one is set:
 * kubelet's probes (/healthz, /readyz) need none. Returns 1 when answered.
 */
static int
server_guard(struct server_listener *lis, struct evhttp_request *req,
    const char *path, unsigned long id, const struct timeval *t0)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	const char *method = server_method_name(evhttp_request_get_command(req));
	const char *why;
	char *uri;
	size_t n;
	int status;

	if ((status = guard_head(evhttp_request_get_uri(req),
	    evhttp_request_get_input_headers(req), &why)) != 0) {
		evhttp_add_header(h, "Connection", "close");
		uri = strndup(evhttp_request_get_uri(req), 256);
		n = reply_error(req, status, OCI_ERR_UNSUPPORTED, why);
		server_log(id, method, uri, OCI_ROUTE_NONE, status, n, t0);
		free(uri);
		return 1;
	}
	if (strcmp(path, "/healthz") == 0 || strcmp(path, "/readyz") == 0 ||
	    guard_authorized(lis->l_guard, req))
		return 0;
	evhttp_add_header(h, "WWW-Authenticate", "Basic realm=\"pullproxy\"");
	server_reply_error(req, id, OCI_ROUTE_NONE, OCI_ERR_UNAUTHORIZED,
	    "this mirror needs its client token or certificate", t0);
	return 1;
}

static void
server_request_cb(struct evhttp_request *req, void *arg)
{
	struct server_listener *lis = arg;
	struct server *srv = lis->l_srv;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	const char *path = evhttp_uri_get_path(uri);
	struct client_request rq;
	char ns[OCI_NAME_MAX + 1];
	enum oci_err err;
	int hasns;

	memset(&rq, 0, sizeof(rq));
	rq.id = ++srv->s_nextid;
	rq.head = cmd == EVHTTP_REQ_HEAD;
	gettimeofday(&rq.t0, NULL);
	if (path == NULL || *path == '\0')
		path = "/";
	rq.from_peer = lis->l_role == SERVER_PEERS;
	if (server_guard(lis, req, path, rq.id, &rq.t0))
		return;
	/* Not a client request: adminapi logs what it does. */
	if (lis->l_role == SERVER_ADMIN) {
		adminapi_handle(srv->s_cache, req, path);
		return;
	}
	if (server_ops(lis, req, path))
		return;
	if (lis->l_role == SERVER_METRICS)
		err = OCI_ERR_NOT_FOUND;
	else if ((err = oci_route_parse(path, &rq.route)) != OCI_OK)
		rq.route.kind = OCI_ROUTE_NONE;
	else if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD)
		err = OCI_ERR_METHOD;
	else if (rq.route.kind == OCI_ROUTE_TAGS &&
	    oci_query_tags(evhttp_uri_get_query(uri), &rq.route) == -1)
		err = OCI_ERR_PAGINATION;
	if (err != OCI_OK) {
		server_reply_error(req, rq.id, rq.route.kind, err, NULL, &rq.t0);
		return;
	}
	if (rq.route.kind == OCI_ROUTE_BASE) {
		struct evbuffer *body = evbuffer_new();
		struct evkeyvalq *h = evhttp_request_get_output_headers(req);

		evhttp_add_header(h, "Content-Type", "application/json");
		evhttp_add_header(h, "Docker-Distribution-API-Version",
		    "registry/2.0");
		if (cmd == EVHTTP_REQ_HEAD)
			evhttp_add_header(h, "Content-Length", "2");
		else if (body != NULL)
			evbuffer_add(body, "{}", 2);
		client_log(&rq, evhttp_request_get_uri(req), 200,
		    body != NULL ? evbuffer_get_length(body) : 0);
		evhttp_send_reply(req, 200, "OK", body);
		if (body != NULL)
			evbuffer_free(body);
		return;
	}

	hasns = oci_query_ns(evhttp_uri_get_query(uri), ns, sizeof(ns));
	rq.reg = hasns == 1 ? registry_set_find(srv->s_regs, ns) :
	    hasns == 0 ? registry_set_find(srv->s_regs, NULL) : NULL;
	if (rq.reg == NULL) {
		/* An open ns would let any local process use the node's
		 * identity against any URL: refuse before any lookup. */
		log_event(LOG_LEVEL_WARN, "ns refused", server_typo(json_pack(
		    "{s:I,s:s}", "id", (json_int_t)rq.id, "ns", hasns == 1 ? ns :
		    "(malformed)"), hasns == 1 ? ns : NULL));
		server_reply_error(req, rq.id, rq.route.kind,
		    OCI_ERR_NAME_UNKNOWN, "registry not configured on this "
		    "mirror", &rq.t0);
		return;
	}
	/* The cache keys sha256 only: rarer digests pass through. */
	if (rq.route.by_digest &&
	    strncmp(rq.route.reference, "sha256:", 7) != 0)
		relay_start(srv->s_relays, req, &rq);
	else if (rq.route.kind == OCI_ROUTE_MANIFEST)
		manifest_start(srv->s_manifests, req, &rq);
	else if (rq.route.kind == OCI_ROUTE_BLOB)
		blob_start(srv->s_blobs, req, &rq);
	else
		relay_start(srv->s_relays, req, &rq);
}

static int
server_open_cache(struct server *srv)
{
	const struct config *cfg = srv->s_cfg;
	struct cache_opts opts;
	char err[512];

	memset(&opts, 0, sizeof(opts));
	opts.dir = cfg->cache_dir;
	opts.max_bytes = cfg->cache_max_bytes;
	opts.high_pct = cfg->cache_high_pct;
	opts.low_pct = cfg->cache_low_pct;
	opts.server = 1;
	if (cache_open(&srv->s_cache, &opts, err, sizeof(err)) == CACHE_OK)
		return 0;
	/* Start-up failures go to the terminal too: the log may be a file. */
	fprintf(stderr, "pullproxy: %s\n", err);
	log_event(LOG_LEVEL_ERROR, "cannot open the cache", json_pack(
	    "{s:s,s:s}", "dir", cfg->cache_dir, "error", err));
	return -1;
}

/* Each registry's identity, pace and breakers, from its config section. */
static int
server_registries_new(struct server *srv)
{
	char err[CONFIG_ERR_MAX];

	metrics_reset();
	if ((srv->s_regs = registry_set_new(srv->s_base, srv->s_up,
	    srv->s_cfg, err, sizeof(err))) != NULL)
		return 0;
	fprintf(stderr, "pullproxy: %s\n", err);
	log_event(LOG_LEVEL_ERROR, "cannot set up registry auth", json_pack(
	    "{s:s}", "error", err));
	return -1;
}

/*
 * Every client connection's bufferevent: the guard's (it times request
 * heads), with a larger write size.
 */
static struct bufferevent *
server_bev_cb(struct event_base *base, void *arg)
{
	struct server_listener *lis = arg;
	struct bufferevent *bev;

	(void)base;
	bev = guard_bev_new(lis->l_guard);
	if (bev != NULL)
		bufferevent_set_max_single_write(bev, SERVER_MAX_WRITE);
	return bev;
}

/*
 * The admin socket at path, 0600. A socket left by a server that died is
 * replaced: the cache's lock, already ours, says no other server runs.
 */
static struct evhttp_bound_socket *
server_bind_unix(struct server_listener *lis, const char *path)
{
	struct evconnlistener *lev;
	struct sockaddr_un sun;
	mode_t mask;
	int fd, rc;

	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sun.sun_path)) {
		errno = ENAMETOOLONG;
		return NULL;
	}
	memcpy(sun.sun_path, path, strlen(path) + 1);
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
	    0)) == -1)
		return NULL;
	(void)unlink(path);
	mask = umask(0177);
	rc = bind(fd, (struct sockaddr *)&sun, sizeof(sun));
	umask(mask);
	if (rc == -1 || listen(fd, 16) == -1 || (lev = evconnlistener_new(
	    lis->l_srv->s_base, NULL, NULL, LEV_OPT_CLOSE_ON_FREE, -1,
	    fd)) == NULL) {
		close(fd);
		return NULL;
	}
	if ((lis->l_srv->s_admin_path = strdup(path)) == NULL) {
		evconnlistener_free(lev);
		return NULL;
	}
	return evhttp_bind_listener(lis->l_http, lev);
}

/* Bind a listener with its guard; -1, logged, when it cannot. */
static int
server_listen(struct server_listener *lis, const char *host, int port,
    const struct guard_opts *opts)
{
	const struct config *cfg = lis->l_srv->s_cfg;
	char err[CONFIG_ERR_MAX];

	if ((lis->l_guard = guard_new(lis->l_srv->s_base, opts, err,
	    sizeof(err))) == NULL) {
		fprintf(stderr, "pullproxy: %s\n", err);
		log_event(LOG_LEVEL_ERROR, "cannot set up the server",
		    json_pack("{s:s}", "error", err));
		return -1;
	}
	if ((lis->l_http = evhttp_new(lis->l_srv->s_base)) == NULL)
		return -1;
	/* Let every method through so the API answers 405, not evhttp. */
	evhttp_set_allowed_methods(lis->l_http, EVHTTP_REQ_GET |
	    EVHTTP_REQ_HEAD | EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
	    EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
	evhttp_set_max_headers_size(lis->l_http, SERVER_MAX_HEADERS);
	evhttp_set_max_body_size(lis->l_http, SERVER_MAX_BODY);
	evhttp_set_timeout(lis->l_http, (int)cfg->idle_timeout_s);
	evhttp_set_gencb(lis->l_http, server_request_cb, lis);
	evhttp_set_bevcb(lis->l_http, server_bev_cb, lis);
	if (lis->l_role == SERVER_ADMIN)
		lis->l_sock = server_bind_unix(lis, host);
	else
		lis->l_sock = evhttp_bind_socket_with_handle(lis->l_http, host,
		    (ev_uint16_t)port);
	if (lis->l_sock == NULL) {
		log_event(LOG_LEVEL_ERROR, "cannot listen", json_pack(
		    "{s:s,s:i}", "host", host, "port", port));
		return -1;
	}
	guard_listen(lis->l_guard, evhttp_bound_socket_get_listener(
	    lis->l_sock));
	return 0;
}

struct server *
server_new(struct event_base *base, const struct config *cfg)
{
	const struct guard_opts clients = { cfg->client_token_file,
	    "[server] client_token_file", cfg->tls_cert_file,
	    cfg->tls_key_file, cfg->client_ca_file, cfg->header_timeout_s };
	const struct guard_opts peers = { cfg->fleet.peer_token_file,
	    "[fleet] peer_token_file", NULL, NULL, NULL,
	    cfg->header_timeout_s };
	const struct guard_opts metrics = { NULL, NULL, NULL, NULL, NULL,
	    cfg->header_timeout_s };
	char admin[4096];
	struct server *srv;
	int r;

	if ((srv = calloc(1, sizeof(*srv))) == NULL)
		return NULL;
	srv->s_base = base;
	srv->s_cfg = cfg;
	TAILQ_INIT(&srv->s_retired);
	for (r = 0; r < SERVER_NROLES; r++) {
		srv->s_lis[r].l_srv = srv;
		srv->s_lis[r].l_role = r;
	}
	srv->s_up = upstream_new(base);
	if (server_open_cache(srv) == -1) {
		server_free(srv);
		return NULL;
	}
	if (srv->s_up == NULL ||
	    server_registries_new(srv) == -1 ||
	    (srv->s_relays = relay_ctx_new(srv->s_up)) == NULL ||
	    (srv->s_blobs = blob_ctx_new(srv->s_up, srv->s_cache, cfg,
	    srv->s_relays)) == NULL ||
	    (srv->s_manifests = manifest_ctx_new(srv->s_up, srv->s_cache,
	    cfg)) == NULL) {
		log_msg(LOG_LEVEL_ERROR, "cannot set up the server");
		server_free(srv);
		return NULL;
	}
	if (server_listen(&srv->s_lis[SERVER_CLIENTS], cfg->listen_host,
	    cfg->listen_port, &clients) == -1 ||
	    (cfg->fleet.peer_listen_host != NULL &&
	    server_listen(&srv->s_lis[SERVER_PEERS],
	    cfg->fleet.peer_listen_host, cfg->fleet.peer_listen_port,
	    &peers) == -1) ||
	    (cfg->metrics_listen_host != NULL &&
	    server_listen(&srv->s_lis[SERVER_METRICS],
	    cfg->metrics_listen_host, cfg->metrics_listen_port,
	    &metrics) == -1)) {
		server_free(srv);
		return NULL;
	}
	/*
	 * No credential: the socket's mode is the gate. Without it the
	 * server still serves, and cache evict says why it cannot.
	 */
	snprintf(admin, sizeof(admin), "%s/%s", cfg->cache_dir,
	    ADMINAPI_SOCKET);
	if (server_listen(&srv->s_lis[SERVER_ADMIN], admin, 0,
	    &metrics) == -1)
		log_event(LOG_LEVEL_WARN, "no admin socket: pullproxy cache "
		    "evict and purge need the server stopped", json_pack(
		    "{s:s}", "path", admin));
	return srv;
}

void
server_stop_accepting(struct server *srv)
{
	struct server_listener *lis;
	int r;

	for (r = 0; r < SERVER_NROLES; r++) {
		lis = &srv->s_lis[r];
		if (lis->l_sock == NULL)
			continue;
		guard_listen(lis->l_guard, NULL);
		evhttp_del_accept_socket(lis->l_http, lis->l_sock);
		lis->l_sock = NULL;
	}
}

int
server_inflight(const struct server *srv)
{
	return relay_ctx_inflight(srv->s_relays) +
	    blob_ctx_inflight(srv->s_blobs) +
	    manifest_ctx_inflight(srv->s_manifests);
}

static void
server_config_free(struct config *cfg)
{
	if (cfg != NULL) {
		config_free(cfg);
		free(cfg);
	}
}

/* After registry_set_close (and, at exit, after upstream_free). */
static void
server_gen_free(struct server_gen *g)
{
	TAILQ_REMOVE(&g->g_srv->s_retired, g, g_entry);
	registry_set_free(g->g_regs);
	server_config_free(g->g_cfg);
	free(g);
}

/* No request holds a retired generation any more: let it go. */
static void
server_gen_unused(void *arg)
{
	struct server_gen *g = arg;

	registry_set_close(g->g_regs);
	server_gen_free(g);
	log_msg(LOG_LEVEL_DEBUG, "previous config released");
}

int
server_reload(struct server *srv, struct config *cfg)
{
	const struct config *now = srv->s_own != NULL ? srv->s_own :
	    srv->s_cfg;
	char err[CONFIG_ERR_MAX];
	struct registry_set *regs;
	struct server_gen *g;
	const char *key;
	json_t *changes;

	if ((key = confdiff_restart(srv->s_cfg, cfg)) != NULL)
		snprintf(err, sizeof(err), "%s changed: that needs a restart",
		    key);
	else if ((g = calloc(1, sizeof(*g))) == NULL)
		snprintf(err, sizeof(err), "out of memory");
	else if ((regs = registry_set_new(srv->s_base, srv->s_up, cfg, err,
	    sizeof(err))) == NULL)
		free(g);
	else {
		changes = confdiff_changes(now, cfg);
		g->g_srv = srv;
		g->g_cfg = srv->s_own;
		g->g_regs = srv->s_regs;
		TAILQ_INSERT_TAIL(&srv->s_retired, g, g_entry);
		srv->s_regs = regs;
		srv->s_own = cfg;
		registry_set_retire(g->g_regs, server_gen_unused, g);
		log_event(LOG_LEVEL_INFO, "config reloaded", json_pack(
		    "{s:o*,s:i}", "changes", changes, "inflight",
		    server_inflight(srv)));
		server_check_names(cfg);
		return 0;
	}
	log_event(LOG_LEVEL_ERROR, "reload refused", json_pack("{s:s,s:s}",
	    "error", err, "kept", "the running config"));
	server_config_free(cfg);
	return -1;
}

void
server_free(struct server *srv)
{
	struct server_gen *g;
	int r;

	if (srv == NULL)
		return;
	/* Requests first: evhttp_free would free them under their owners. */
	manifest_ctx_free(srv->s_manifests);
	blob_ctx_free(srv->s_blobs);
	relay_ctx_free(srv->s_relays);
	for (r = 0; r < SERVER_NROLES; r++) {
		if (srv->s_lis[r].l_http != NULL)
			evhttp_free(srv->s_lis[r].l_http);
		/* After evhttp: its connections go with it. */
		guard_free(srv->s_lis[r].l_guard);
	}
	if (srv->s_admin_path != NULL)
		(void)unlink(srv->s_admin_path);
	free(srv->s_admin_path);
	registry_set_close(srv->s_regs);
	TAILQ_FOREACH(g, &srv->s_retired, g_entry)
		registry_set_close(g->g_regs);
	upstream_free(srv->s_up);
	registry_set_free(srv->s_regs);
	server_config_free(srv->s_own);
	while ((g = TAILQ_FIRST(&srv->s_retired)) != NULL)
		server_gen_free(g);
	/* After evhttp: queued file segments unpin the cache as they go. */
	if (srv->s_cache != NULL)
		cache_close(srv->s_cache);
	free(srv);
}

/*
 * Shutdown: SIGTERM stops accepting; the drain timer ends the loop.
 * SIGHUP reloads the config with sr_load.
 */
struct server_run {
	struct server	*sr_srv;
	server_loader	 sr_load;
	void		*sr_load_arg;
	struct event	*sr_drain;
	struct timeval	 sr_deadline;
	int		 sr_stopping;
};

static void
server_drain_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server_run *run = arg;
	struct timeval now;
	int left = server_inflight(run->sr_srv);

	(void)fd;
	(void)what;
	gettimeofday(&now, NULL);
	if (left == 0 || timercmp(&now, &run->sr_deadline, >=)) {
		if (left > 0)
			log_event(LOG_LEVEL_WARN, "shutdown deadline passed",
			    json_pack("{s:i}", "aborted", left));
		event_base_loopexit(run->sr_srv->s_base, NULL);
	}
}

static void
server_signal_cb(evutil_socket_t sig, short what, void *arg)
{
	struct server_run *run = arg;
	const struct config *cfg = run->sr_srv->s_cfg;
	struct timeval every = { 0, 100 * 1000 }, grace;

	(void)what;
	if (run->sr_stopping) {	/* a second signal: no more waiting */
		event_base_loopexit(run->sr_srv->s_base, NULL);
		return;
	}
	run->sr_stopping = 1;
	log_event(LOG_LEVEL_INFO, "shutting down", json_pack("{s:s,s:i}",
	    "signal", sig == SIGTERM ? "SIGTERM" : "SIGINT", "inflight",
	    server_inflight(run->sr_srv)));
	server_stop_accepting(run->sr_srv);
	gettimeofday(&run->sr_deadline, NULL);
	grace.tv_sec = cfg->shutdown_timeout_s;
	grace.tv_usec = 0;
	timeradd(&run->sr_deadline, &grace, &run->sr_deadline);
	event_add(run->sr_drain, &every);
	server_drain_cb(-1, 0, run);
}

static void
server_hup_cb(evutil_socket_t sig, short what, void *arg)
{
	struct server_run *run = arg;
	char err[CONFIG_ERR_MAX];
	struct config *cfg;

	(void)sig;
	(void)what;
	if (run->sr_stopping)
		return;
	log_msg(LOG_LEVEL_INFO, "SIGHUP: reloading the config");
	if ((cfg = run->sr_load(run->sr_load_arg, err, sizeof(err))) == NULL) {
		log_event(LOG_LEVEL_ERROR, "reload refused", json_pack(
		    "{s:s,s:s}", "error", err, "kept", "the running config"));
		return;
	}
	server_reload(run->sr_srv, cfg);
}

/*
 * With epoll's changelist, the disable/enable pairs each keep-alive request
 * makes on its socket within one loop turn cost one epoll_ctl, or none:
 * measured, 4 epoll_ctl per manifest hit became 2 and hits per second rose
 * from about 66k to 84k on 2 cores. (The changelist's caveat, dup'd file
 * descriptors, does not arise here.)
 */
static struct event_base *
server_base_new(void)
{
	struct event_config *ec;
	struct event_base *base;

	if ((ec = event_config_new()) == NULL)
		return NULL;
	event_config_set_flag(ec, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
	base = event_base_new_with_config(ec);
	event_config_free(ec);
	return base;
}

int
server_run(const struct config *cfg, server_loader load, void *arg)
{
	struct server_run run;
	struct event_base *base;
	struct event *sigterm, *sigint, *sighup;
	char listen[300];
	json_t *regs;
	int rc = 1;

	signal(SIGPIPE, SIG_IGN);
	if ((base = server_base_new()) == NULL)
		return 1;
	memset(&run, 0, sizeof(run));
	run.sr_load = load;
	run.sr_load_arg = arg;
	server_check_names(cfg);
	if (incident_begin(base) == -1)
		goto out;
	if ((run.sr_srv = server_new(base, cfg)) == NULL)
		goto out;
	run.sr_drain = event_new(base, -1, EV_PERSIST, server_drain_cb, &run);
	sigterm = evsignal_new(base, SIGTERM, server_signal_cb, &run);
	sigint = evsignal_new(base, SIGINT, server_signal_cb, &run);
	sighup = evsignal_new(base, SIGHUP, server_hup_cb, &run);
	evsignal_add(sigterm, NULL);
	evsignal_add(sigint, NULL);
	evsignal_add(sighup, NULL);
	regs = json_array();
	for (size_t i = 0; i < cfg->nregistries; i++)
		json_array_append_new(regs, json_string(cfg->registries[i].name));
	snprintf(listen, sizeof(listen), "%s:%d", cfg->listen_host,
	    cfg->listen_port);
	log_event(LOG_LEVEL_INFO, "listening", json_pack("{s:s,s:s,s:o}",
	    "listen", listen, "version", PULLPROXY_VERSION, "registries",
	    regs));
	event_base_dispatch(base);
	log_msg(LOG_LEVEL_INFO, "stopped");
	rc = 0;
	event_free(sigterm);
	event_free(sigint);
	event_free(sighup);
	event_free(run.sr_drain);
	server_free(run.sr_srv);
out:
	incident_end();
	event_base_free(base);
	return rc;
}
