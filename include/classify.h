/*
 * classify: what went wrong upstream, in the operator's terms. From the
 * facts of one failed interaction (where it was, curl's result, the HTTP
 * status, ACR's error code and message, the host) to one cause from a
 * fixed list and a hint naming the fix (the failure taxonomy of the
 * design notes, section 5, after Microsoft's ACR/AKS troubleshooting
 * articles). This module is the one translation of CURLcode and HTTP
 * status into causes. Pure functions: no I/O, no allocation.
 */
#ifndef PP_CLASSIFY_H
#define PP_CLASSIFY_H

#include <stddef.h>
#include <curl/curl.h>


/* Where it failed. Callers say request, body, digest or an auth step;
 * classify narrows a transport failure down to dns, connect or tls. */
enum classify_phase {
	CLASSIFY_PHASE_REQUEST = 0,	/* the HTTP exchange with the registry */
	CLASSIFY_PHASE_DNS,
	CLASSIFY_PHASE_CONNECT,
	CLASSIFY_PHASE_TLS,
	CLASSIFY_PHASE_IMDS,
	CLASSIFY_PHASE_EXCHANGE,	/* ACR's /oauth2/exchange */
	CLASSIFY_PHASE_TOKEN,		/* the realm's token endpoint */
	CLASSIFY_PHASE_REDIRECT,	/* the hop to blob storage */
	CLASSIFY_PHASE_BODY,		/* after the response headers */
	CLASSIFY_PHASE_DIGEST,
	CLASSIFY_PHASE_PLATFORM,
};

enum classify_cause {
	CLASSIFY_NONE = 0,	/* no upstream fault in the evidence */
	CLASSIFY_AUTH_UNAUTHORIZED,
	CLASSIFY_AUTH_IDENTITY_UNAVAILABLE,
	CLASSIFY_FORBIDDEN_NETWORK,
	CLASSIFY_NOT_FOUND,
	CLASSIFY_NAME_TYPO,
	CLASSIFY_DNS_FAILURE,
	CLASSIFY_CONNECT_TIMEOUT,
	CLASSIFY_IO_TIMEOUT,
	CLASSIFY_CONNECTION_REFUSED,
	CLASSIFY_CONNECTION_RESET,
	CLASSIFY_TLS_ERROR,
	CLASSIFY_THROTTLED,
	CLASSIFY_UPSTREAM_UNAVAILABLE,
	CLASSIFY_PLATFORM_MISMATCH,
	CLASSIFY_DIGEST_MISMATCH,
	CLASSIFY_REDIRECT_FAILED,
	CLASSIFY_NCAUSES,
};

/* What happened; zero everything that is not known. */
struct classify_input {
	enum classify_phase phase;
	CURLcode	 curl;		/* CURLE_OK: the exchange completed */
	long		 os_errno;	/* curl's CURLINFO_OS_ERRNO */
	int		 connected;	/* a connection to the host was up */
	int		 headers;	/* the final response's headers came */
	int		 redirected;	/* the failing hop was a redirect target */
	int		 throttled;	/* never sent: pullproxy's own pace */
	/* Never sent: the circuit opened after this cause (upstream.h). */
	enum classify_cause circuit;
	long		 status;	/* HTTP status, 0 if none */
	const char	*acr_code;	/* errors[0].code (or OAuth "error") */
	const char	*acr_message;
	const char	*host;		/* the registry's name, or NULL */
};

struct classify_result {
	enum classify_cause cause;
	enum classify_phase phase;	/* the input's, narrowed */
	const char	*hint;		/* static; NULL with CLASSIFY_NONE */
	/*
	 * The registry or the path to it failed (transport, timeout, a
	 * broken answer, 5xx): what counts against it (circuit.h). 0 for
	 * answers to the request, any 4xx included, for pullproxy's own
	 * failures and for transfers that never went out.
	 */
	int		 fault;
};

void classify(const struct classify_input *in, struct classify_result *out);

const char *classify_cause_name(enum classify_cause cause);
const char *classify_phase_name(enum classify_phase phase);

/*
 * 1 when host (a registry name, host[:port]) looks like a typo of a
 * login server under azurecr.io (azureacr.io, azurcr.io, azure.cr.io,
 * azurecr.com...): its domain is within two edits of azurecr.io but is
 * not one of ACR's (azurecr.io, azurecr.cn, azurecr.us).
 */
int classify_name_typo(const char *host);

/* The hint of a cause in general, for lines that have no other facts. */
const char *classify_hint(enum classify_cause cause);

#endif
