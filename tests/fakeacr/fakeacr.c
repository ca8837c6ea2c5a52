/*
 * fakeacr: command line, listeners and shutdown. Every listener is bound
 * to 127.0.0.1; the registry and storage listeners speak TLS when a
 * certificate is given, IMDS and control are plain HTTP as in Azure.
 */
#include <sys/types.h>

#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "fakeacr.h"

struct fa_conf		 fa_conf = {
	.access_ttl = 300,
	.refresh_ttl = 10800,
	.imds_ttl = 86400,
	.sas_ttl = 1200,
};
struct event_base	*fa_base;

static char		 fakeacr_urls[FA_NLISTENERS][64];
static unsigned short	 fakeacr_ports[FA_NLISTENERS];
static const char	*fakeacr_names[FA_NLISTENERS] = {
	"--listen", "--blob-listen", "--imds-listen", "--control-listen"
};

static void __attribute__((noreturn))
fakeacr_usage(void)
{
	fprintf(stderr, "usage: fakeacr --listen ADDR --blob-listen ADDR "
	    "--imds-listen ADDR --control-listen ADDR [--cert PEM --key PEM] "
	    "--content DIR --service NAME [--access-ttl S] [--refresh-ttl S] "
	    "[--tenant ID] [--client-id ID ...] [--user NAME:PASSWORD ...] "
	    "[--anonymous]\n");
	exit(2);
}

const char *
fakeacr_url(enum fa_listener l)
{
	return fakeacr_urls[l];
}

static long
fakeacr_number(const char *s, long min, long max)
{
	char	*end;
	long	 v;

	v = strtol(s, &end, 10);
	if (*s == '\0' || *end != '\0' || v < min || v > max) {
		fprintf(stderr, "fakeacr: bad number: %s\n", s);
		exit(2);
	}
	return v;
}

/* Tests must never expose the fake beyond the node: loopback only. */
static unsigned short
fakeacr_port(enum fa_listener l)
{
	const char	*a = fa_conf.listen[l];

	if (a == NULL)
		fakeacr_usage();
	if (strncmp(a, "127.0.0.1:", 10) != 0) {
		fprintf(stderr, "fakeacr: %s must be 127.0.0.1:PORT\n",
		    fakeacr_names[l]);
		exit(2);
	}
	return (unsigned short)fakeacr_number(a + 10, 1, 65535);
}

static const char **
fakeacr_append(const char **v, size_t *n, const char *s)
{
	const char	**nv;

	if ((nv = reallocarray(v, *n + 1, sizeof(*v))) == NULL) {
		perror("fakeacr");
		exit(1);
	}
	nv[(*n)++] = s;
	return nv;
}

static void
fakeacr_options(int argc, char *argv[])
{
	static const struct option opts[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "blob-listen", required_argument, NULL, 'b' },
		{ "imds-listen", required_argument, NULL, 'i' },
		{ "control-listen", required_argument, NULL, 'C' },
		{ "cert", required_argument, NULL, 'c' },
		{ "key", required_argument, NULL, 'k' },
		{ "content", required_argument, NULL, 'd' },
		{ "service", required_argument, NULL, 's' },
		{ "access-ttl", required_argument, NULL, 'a' },
		{ "refresh-ttl", required_argument, NULL, 'r' },
		{ "tenant", required_argument, NULL, 't' },
		{ "client-id", required_argument, NULL, 'I' },
		{ "user", required_argument, NULL, 'u' },
		{ "anonymous", no_argument, NULL, 'A' },
		{ NULL, 0, NULL, 0 }
	};
	int	ch;

	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (ch) {
		case 'l': fa_conf.listen[FA_REGISTRY] = optarg; break;
		case 'b': fa_conf.listen[FA_STORAGE] = optarg; break;
		case 'i': fa_conf.listen[FA_IMDS] = optarg; break;
		case 'C': fa_conf.listen[FA_CONTROL] = optarg; break;
		case 'c': fa_conf.cert = optarg; break;
		case 'k': fa_conf.key = optarg; break;
		case 'd': fa_conf.content = optarg; break;
		case 's': fa_conf.service = optarg; break;
		case 'a':
			fa_conf.access_ttl = fakeacr_number(optarg, 1,
			    INT_MAX);
			break;
		case 'r':
			fa_conf.refresh_ttl = fakeacr_number(optarg, 1,
			    INT_MAX);
			break;
		case 't': fa_conf.tenant = optarg; break;
		case 'I':
			fa_conf.client_ids = fakeacr_append(fa_conf.client_ids,
			    &fa_conf.nclient_ids, optarg);
			break;
		case 'u':
			if (strchr(optarg, ':') == NULL)
				fakeacr_usage();
			fa_conf.users = fakeacr_append(fa_conf.users,
			    &fa_conf.nusers, optarg);
			break;
		case 'A': fa_conf.anonymous = 1; break;
		default: fakeacr_usage();
		}
	}
	if (optind != argc || fa_conf.content == NULL ||
	    fa_conf.service == NULL ||
	    (fa_conf.cert == NULL) != (fa_conf.key == NULL))
		fakeacr_usage();
	for (ch = 0; ch < FA_NLISTENERS; ch++)
		fakeacr_ports[ch] = fakeacr_port(ch);
}

static SSL_CTX *
fakeacr_tls(void)
{
	SSL_CTX	*ctx;

	if ((ctx = SSL_CTX_new(TLS_server_method())) == NULL)
		return NULL;
	if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
	    SSL_CTX_use_certificate_chain_file(ctx, fa_conf.cert) != 1 ||
	    SSL_CTX_use_PrivateKey_file(ctx, fa_conf.key,
	    SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
		ERR_print_errors_fp(stderr);
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

static struct bufferevent *
fakeacr_bevcb(struct event_base *base, void *arg)
{
	struct bufferevent	*bev;
	SSL			*ssl;

	if ((ssl = SSL_new(arg)) == NULL)
		return NULL;
	bev = bufferevent_openssl_socket_new(base, -1, ssl,
	    BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL) {
		SSL_free(ssl);
		return NULL;
	}
	/* Clients hang up without close_notify all the time. */
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	return bev;
}

static void
fakeacr_request(struct evhttp_request *req, void *arg)
{
	enum fa_listener	 l = (enum fa_listener)(intptr_t)arg;
	struct fa_req		*fr;

	if (l == FA_CONTROL) {
		control_handle(req);
		return;
	}
	if ((fr = req_new(req, l)) == NULL) {
		evhttp_send_error(req, 500, NULL);
		return;
	}
	switch (l) {
	case FA_REGISTRY:
		registry_handle(fr);
		break;
	case FA_STORAGE:
		storage_handle(fr);
		break;
	default:
		imds_handle(fr);
		break;
	}
}

static void
fakeacr_signal(evutil_socket_t sig, short ev, void *arg)
{
	(void)sig;
	(void)ev;
	(void)arg;
	event_base_loopbreak(fa_base);
}

int
main(int argc, char *argv[])
{
	struct evhttp	*http[FA_NLISTENERS] = { NULL };
	struct event	*sigterm = NULL, *sigint = NULL;
	SSL_CTX		*tls = NULL;
	int		 l, rc = 1;

	fakeacr_options(argc, argv);
	/* A client that vanishes must not kill the fake with SIGPIPE. */
	signal(SIGPIPE, SIG_IGN);
	if ((fa_base = event_base_new()) == NULL || auth_init() == -1 ||
	    fault_init() == -1 || control_init() == -1)
		goto done;
	if (fa_conf.cert != NULL && (tls = fakeacr_tls()) == NULL)
		goto done;
	for (l = 0; l < FA_NLISTENERS; l++) {
		snprintf(fakeacr_urls[l], sizeof(fakeacr_urls[l]),
		    "%s://127.0.0.1:%u", tls != NULL && (l == FA_REGISTRY ||
		    l == FA_STORAGE) ? "https" : "http", fakeacr_ports[l]);
		if ((http[l] = evhttp_new(fa_base)) == NULL)
			goto done;
		evhttp_set_allowed_methods(http[l], EVHTTP_REQ_GET |
		    EVHTTP_REQ_HEAD | EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
		    EVHTTP_REQ_DELETE | EVHTTP_REQ_PATCH);
		evhttp_set_max_body_size(http[l], 1 << 20);
		/* A reply without a type has none, not text/html. */
		evhttp_set_default_content_type(http[l], NULL);
		/* Stalls are injected on purpose; keep libevent's own
		 * timeouts out of their way. */
		evhttp_set_timeout(http[l], 3600);
		evhttp_set_gencb(http[l], fakeacr_request, (void *)(intptr_t)l);
		if (tls != NULL && (l == FA_REGISTRY || l == FA_STORAGE))
			evhttp_set_bevcb(http[l], fakeacr_bevcb, tls);
		if (evhttp_bind_socket_with_handle(http[l], "127.0.0.1",
		    fakeacr_ports[l]) == NULL) {
			fprintf(stderr, "fakeacr: cannot listen on %s\n",
			    fa_conf.listen[l]);
			goto done;
		}
	}
	sigterm = evsignal_new(fa_base, SIGTERM, fakeacr_signal, NULL);
	sigint = evsignal_new(fa_base, SIGINT, fakeacr_signal, NULL);
	if (sigterm == NULL || sigint == NULL ||
	    evsignal_add(sigterm, NULL) == -1 ||
	    evsignal_add(sigint, NULL) == -1)
		goto done;
	printf("fakeacr ready\n");
	fflush(stdout);
	if (event_base_dispatch(fa_base) != -1)
		rc = 0;
done:
	/* Replies still held by a fault go before their connections. */
	req_shutdown();
	for (l = 0; l < FA_NLISTENERS; l++)
		if (http[l] != NULL)
			evhttp_free(http[l]);
	if (sigterm != NULL)
		event_free(sigterm);
	if (sigint != NULL)
		event_free(sigint);
	SSL_CTX_free(tls);
	fault_free();
	control_free();
	if (fa_base != NULL)
		event_base_free(fa_base);
	libevent_global_shutdown();
	free(fa_conf.client_ids);
	free(fa_conf.users);
	return rc;
}
