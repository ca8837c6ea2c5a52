/*
 * classify: upstream failures to causes and hints.
 *
 * Order of evidence: the caller's own verdicts (digest, platform) first,
 * then a name that looks like a typo (every other symptom follows from
 * it), then curl's transport result, then the HTTP status. A hop to
 * storage after a redirect is the data endpoint, with rules of its own.
 */
#include <ctype.h>
#include <errno.h>
#include <string.h>
#include <strings.h>

#include "classify.h"

#define CLASSIFY_ACR_DOMAIN	"azurecr.io"
#define CLASSIFY_TYPO_EDITS	2
#define CLASSIFY_HOST_MAX	255

static const char *classify_cause_names[CLASSIFY_NCAUSES] = {
	[CLASSIFY_NONE] = "none",
	[CLASSIFY_AUTH_UNAUTHORIZED] = "auth_unauthorized",
	[CLASSIFY_AUTH_IDENTITY_UNAVAILABLE] = "auth_identity_unavailable",
	[CLASSIFY_FORBIDDEN_NETWORK] = "forbidden_network",
	[CLASSIFY_NOT_FOUND] = "not_found",
	[CLASSIFY_NAME_TYPO] = "name_typo",
	[CLASSIFY_DNS_FAILURE] = "dns_failure",
	[CLASSIFY_CONNECT_TIMEOUT] = "connect_timeout",
	[CLASSIFY_IO_TIMEOUT] = "io_timeout",
	[CLASSIFY_CONNECTION_REFUSED] = "connection_refused",
	[CLASSIFY_CONNECTION_RESET] = "connection_reset",
	[CLASSIFY_TLS_ERROR] = "tls_error",
	[CLASSIFY_THROTTLED] = "throttled",
	[CLASSIFY_UPSTREAM_UNAVAILABLE] = "upstream_unavailable",
	[CLASSIFY_PLATFORM_MISMATCH] = "platform_mismatch",
	[CLASSIFY_DIGEST_MISMATCH] = "digest_mismatch",
	[CLASSIFY_REDIRECT_FAILED] = "redirect_failed",
};

static const char *classify_phase_names[] = {
	[CLASSIFY_PHASE_REQUEST] = "request",
	[CLASSIFY_PHASE_DNS] = "dns",
	[CLASSIFY_PHASE_CONNECT] = "connect",
	[CLASSIFY_PHASE_TLS] = "tls",
	[CLASSIFY_PHASE_IMDS] = "imds",
	[CLASSIFY_PHASE_EXCHANGE] = "exchange",
	[CLASSIFY_PHASE_TOKEN] = "token",
	[CLASSIFY_PHASE_REDIRECT] = "redirect",
	[CLASSIFY_PHASE_BODY] = "body",
	[CLASSIFY_PHASE_DIGEST] = "digest",
	[CLASSIFY_PHASE_PLATFORM] = "platform",
};

/* Each cause's hint when nothing narrower applies. */
static const char *classify_hints[CLASSIFY_NCAUSES] = {
	[CLASSIFY_AUTH_UNAUTHORIZED] =
	    "the registry refused the node's token: give the kubelet identity "
	    "AcrPull on the registry (az aks update -n CLUSTER -g RG "
	    "--attach-acr ACR; check: az role assignment list --assignee "
	    "CLIENT_ID --all -o table)",
	[CLASSIFY_AUTH_IDENTITY_UNAVAILABLE] =
	    "the node's managed identity gave no token: check that IMDS "
	    "(169.254.169.254) answers on the node and that client_id names "
	    "the kubelet identity (az aks show -g RG -n CLUSTER --query "
	    "identityProfile.kubeletidentity.clientId -o tsv)",
	[CLASSIFY_FORBIDDEN_NETWORK] =
	    "the registry refused this node (403): if its public access is "
	    "limited to selected networks, allow the AKS load balancer's "
	    "public IP (az acr network-rule add --name ACR --ip-address IP); "
	    "with a private endpoint in another VNet, link the "
	    "privatelink.azurecr.io DNS zone to the cluster's VNet",
	[CLASSIFY_NOT_FOUND] =
	    "not found: check the registry, login server (ACR.azurecr.io; a "
	    "common typo is azureacr.io), repository and tag of the image "
	    "reference",
	[CLASSIFY_NAME_TYPO] =
	    "the registry name looks like a typo of azurecr.io (e.g. "
	    "azureacr.io): fix the login server in the image reference, "
	    "hosts.toml and pullproxy's [registry] section",
	[CLASSIFY_DNS_FAILURE] =
	    "the registry name does not resolve on this node: check the "
	    "VNet's custom DNS servers and, with a private endpoint, that the "
	    "privatelink.azurecr.io private DNS zone is linked to the "
	    "cluster's VNet (nslookup ACR.azurecr.io)",
	[CLASSIFY_CONNECT_TIMEOUT] =
	    "no TCP connection to the registry in time: with Private Link "
	    "check VNet peering (az network vnet peering list -g RG "
	    "--vnet-name VNET -o table), NSG and route-table rules and the "
	    "firewall in between (telnet IP 443)",
	[CLASSIFY_IO_TIMEOUT] =
	    "the registry stopped sending (stall_timeout_s): check firewall "
	    "and NSG rules and the path's bandwidth to the registry and "
	    "*.blob.core.windows.net",
	[CLASSIFY_CONNECTION_REFUSED] =
	    "the connection was refused: check the registry URL's host and "
	    "port, and any proxy or firewall in the path that rejects that port",
	[CLASSIFY_CONNECTION_RESET] =
	    "the connection was cut (reset or closed early): a proxy or "
	    "firewall in the path drops it; check its application rules and "
	    "idle timeouts",
	[CLASSIFY_TLS_ERROR] =
	    "the TLS handshake failed: a TLS-inspecting proxy or firewall in "
	    "the path, or a TLS version or cipher it does not allow",
	[CLASSIFY_THROTTLED] =
	    "the registry throttles (429): the ACR SKU's limits are reached; "
	    "spread pulls, keep imagePullPolicy IfNotPresent, or raise the "
	    "SKU (az acr update -n ACR --sku Premium)",
	[CLASSIFY_UPSTREAM_UNAVAILABLE] =
	    "the registry or its storage failed (5xx): a registry incident "
	    "(az acr check-health -n ACR --yes); cached images are still "
	    "served",
	[CLASSIFY_PLATFORM_MISMATCH] =
	    "the image has no variant for this node's os/arch: set the pod's "
	    "nodeSelector (kubernetes.io/os, kubernetes.io/arch) to match the "
	    "image, or push a multi-arch image",
	[CLASSIFY_DIGEST_MISMATCH] =
	    "the bytes did not match their digest and were not kept: a "
	    "middlebox that rewrites or corrupts traffic; check proxies and "
	    "TLS inspection in the path",
	[CLASSIFY_REDIRECT_FAILED] =
	    "the hop to the registry's storage failed: allow the data "
	    "endpoints (*.blob.core.windows.net, ACR.REGION.data.azurecr.io; "
	    "az acr update -n ACR --data-endpoint-enabled) in the firewall",
};

/* Narrower hints, where the evidence tells more. */
#define CLASSIFY_HINT_TOKEN_401 \
	"the registry refused the node's credentials: check the identity's " \
	"AcrPull role (az role assignment list --assignee CLIENT_ID --all), " \
	"an expired service principal secret (az ad app credential list " \
	"--id SP_ID), the kubelet identity on the VMSS (az vmss identity " \
	"show), or the pull secret's values"
#define CLASSIFY_HINT_NO_CREDENTIALS \
	"pullproxy could not present credentials: check the [registry] " \
	"section's auth settings and that its secret files are readable"
#define CLASSIFY_HINT_IMDS_IDENTITY \
	"IMDS has no such identity on this node: set client_id to the " \
	"kubelet identity and check it is assigned to the VMSS (az vmss " \
	"identity show -g NODE_RG -n VMSS; az aks update -g RG -n CLUSTER " \
	"reassigns it)"
#define CLASSIFY_HINT_TOKEN_403 \
	"the registry's firewall refused the token request: allow the AKS " \
	"load balancer's public IP (az acr network-rule add --name ACR " \
	"--ip-address IP), or link the privatelink.azurecr.io DNS zone to " \
	"the cluster's VNet"
#define CLASSIFY_HINT_MANIFEST_UNKNOWN \
	"no such tag or manifest: check the tag (az acr repository " \
	"show-tags -n ACR --repository REPO) and the login server " \
	"(ACR.azurecr.io, not azureacr.io)"
#define CLASSIFY_HINT_NAME_UNKNOWN \
	"no such repository: check the repository name (az acr repository " \
	"list -n ACR) and the login server (ACR.azurecr.io, not azureacr.io)"
#define CLASSIFY_HINT_TLS_VERIFY \
	"the registry's certificate did not verify: a TLS-intercepting " \
	"proxy (add its CA with ca_file), a missing CA bundle, or a wrong " \
	"clock on the node (timedatectl)"
#define CLASSIFY_HINT_LOCAL_PACE \
	"pullproxy's own pace for this registry held the request past " \
	"max_wait_s (after 429s, or rate too low for the load): raise the " \
	"[registry] rate and burst if the ACR SKU allows, or spread pulls"
#define CLASSIFY_HINT_REDIRECT_REFUSED \
	"the registry redirected where pullproxy does not follow (from " \
	"https to plain http, or to a loopback or link-local address such " \
	"as IMDS): check the registry's storage settings and any proxy " \
	"in the path that rewrites its answers"
#define CLASSIFY_HINT_TOKEN_REDIRECT \
	"the token endpoint answered with a redirect: pullproxy sends " \
	"credentials only where the registry's challenge named, never on; " \
	"check the realm and any proxy in the path that rewrites answers"
#define CLASSIFY_HINT_REDIRECT_DNS \
	"the registry's storage host does not resolve: resolve and allow " \
	"*.blob.core.windows.net and ACR.REGION.data.azurecr.io (their " \
	"private DNS zones, with a private endpoint)"

const char *
classify_cause_name(enum classify_cause cause)
{
	return cause >= 0 && cause < CLASSIFY_NCAUSES ?
	    classify_cause_names[cause] : "none";
}

const char *
classify_phase_name(enum classify_phase phase)
{
	return phase >= 0 && phase <= CLASSIFY_PHASE_PLATFORM ?
	    classify_phase_names[phase] : "request";
}

const char *
classify_hint(enum classify_cause cause)
{
	return cause > 0 && cause < CLASSIFY_NCAUSES ?
	    classify_hints[cause] : NULL;
}

static void
classify_set(struct classify_result *out, enum classify_cause cause,
    enum classify_phase phase, const char *hint)
{
	out->cause = cause;
	out->phase = phase;
	out->hint = hint != NULL ? hint : classify_hint(cause);
}

/* ------------------------------------------------------------ name typos */

/* Levenshtein distance, for strings of at most CLASSIFY_HOST_MAX. */
static size_t
classify_edits(const char *a, size_t alen, const char *b, size_t blen)
{
	size_t row[CLASSIFY_HOST_MAX + 1], i, j, diag, up;

	for (j = 0; j <= blen; j++)
		row[j] = j;
	for (i = 1; i <= alen; i++) {
		diag = row[0];
		row[0] = i;
		for (j = 1; j <= blen; j++) {
			up = row[j];
			row[j] = a[i - 1] == b[j - 1] ? diag : 1 + (diag <
			    up ? (diag < row[j - 1] ? diag : row[j - 1]) :
			    (up < row[j - 1] ? up : row[j - 1]));
			diag = up;
		}
	}
	return row[blen];
}

int
classify_name_typo(const char *host)
{
	static const char *acr[] = { ".azurecr.io", ".azurecr.cn",
	    ".azurecr.us" };
	const size_t dlen = strlen(CLASSIFY_ACR_DOMAIN);
	char h[CLASSIFY_HOST_MAX + 1];
	size_t len, i, n;

	if (host == NULL)
		return 0;
	/* The name without port or trailing dot, lowercase. */
	len = strcspn(host, ":");
	if (len > CLASSIFY_HOST_MAX)
		return 0;
	for (i = 0; i < len; i++)
		h[i] = (char)tolower((unsigned char)host[i]);
	if (len > 0 && h[len - 1] == '.')
		len--;
	h[len] = '\0';
	for (i = 0; i < sizeof(acr) / sizeof(acr[0]); i++) {
		n = strlen(acr[i]);
		if (len > n && strcmp(h + len - n, acr[i]) == 0)
			return 0;
	}
	/*
	 * Any ending of the name about as long as the domain, not only
	 * after a dot: "azure.cr.io" and "myacrazurecr.io" are typos too.
	 */
	for (n = dlen - CLASSIFY_TYPO_EDITS; n <= dlen + CLASSIFY_TYPO_EDITS;
	    n++)
		if (n <= len && classify_edits(h + len - n, n,
		    CLASSIFY_ACR_DOMAIN, dlen) <= CLASSIFY_TYPO_EDITS)
			return 1;
	return 0;
}

/* ------------------------------------------------------------- transport */

static void
classify_transport(const struct classify_input *in,
    struct classify_result *out)
{
	enum classify_phase during = in->headers ? CLASSIFY_PHASE_BODY :
	    in->phase == CLASSIFY_PHASE_BODY ? CLASSIFY_PHASE_REQUEST :
	    in->phase;

	switch (in->curl) {
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_RESOLVE_PROXY:
		classify_set(out, CLASSIFY_DNS_FAILURE, CLASSIFY_PHASE_DNS,
		    NULL);
		return;
	case CURLE_COULDNT_CONNECT:
		/* Refused is an answer; anything else is silence on the path. */
		classify_set(out, in->os_errno == ECONNREFUSED ?
		    CLASSIFY_CONNECTION_REFUSED : CLASSIFY_CONNECT_TIMEOUT,
		    CLASSIFY_PHASE_CONNECT, NULL);
		return;
	case CURLE_OPERATION_TIMEDOUT:
		if (!in->connected && !in->headers)
			classify_set(out, CLASSIFY_CONNECT_TIMEOUT,
			    CLASSIFY_PHASE_CONNECT, NULL);
		else
			classify_set(out, CLASSIFY_IO_TIMEOUT, during, NULL);
		return;
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_ISSUER_ERROR:
	case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
	case CURLE_SSL_INVALIDCERTSTATUS:
		classify_set(out, CLASSIFY_TLS_ERROR, CLASSIFY_PHASE_TLS,
		    CLASSIFY_HINT_TLS_VERIFY);
		return;
	case CURLE_SSL_CONNECT_ERROR:
		/* A reset in the handshake is the path, not TLS. */
		if (in->os_errno == ECONNRESET)
			classify_set(out, CLASSIFY_CONNECTION_RESET,
			    CLASSIFY_PHASE_TLS, NULL);
		else
			classify_set(out, CLASSIFY_TLS_ERROR,
			    CLASSIFY_PHASE_TLS, NULL);
		return;
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CIPHER:
	case CURLE_SSL_ENGINE_NOTFOUND:
	case CURLE_SSL_ENGINE_SETFAILED:
	case CURLE_SSL_ENGINE_INITFAILED:
	case CURLE_SSL_CRL_BADFILE:
	case CURLE_SSL_SHUTDOWN_FAILED:
	case CURLE_USE_SSL_FAILED:
		classify_set(out, CLASSIFY_TLS_ERROR, CLASSIFY_PHASE_TLS, NULL);
		return;
	case CURLE_RECV_ERROR:
	case CURLE_SEND_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_PARTIAL_FILE:
		classify_set(out, CLASSIFY_CONNECTION_RESET, during, NULL);
		return;
	case CURLE_TOO_MANY_REDIRECTS:
		classify_set(out, CLASSIFY_REDIRECT_FAILED,
		    CLASSIFY_PHASE_REDIRECT, NULL);
		return;
	case CURLE_ABORTED_BY_CALLBACK:
		/* upstream.c's rule, for a URL the registry named (a realm). */
		classify_set(out, CLASSIFY_REDIRECT_FAILED,
		    CLASSIFY_PHASE_REDIRECT, CLASSIFY_HINT_REDIRECT_REFUSED);
		return;
	case CURLE_URL_MALFORMAT:
	case CURLE_OUT_OF_MEMORY:
	case CURLE_BAD_FUNCTION_ARGUMENT:
	case CURLE_FAILED_INIT:
	case CURLE_NOT_BUILT_IN:
	case CURLE_UNKNOWN_OPTION:
		/* pullproxy's own: nothing was asked of the registry. */
		classify_set(out, CLASSIFY_NONE, in->phase, NULL);
		return;
	default:
		/* HTTP/2 errors, garbled replies, bad encodings. */
		classify_set(out, CLASSIFY_UPSTREAM_UNAVAILABLE, during, NULL);
		return;
	}
}

/* ---------------------------------------------------------------- status */

static int
classify_code_is(const struct classify_input *in, const char *code)
{
	return in->acr_code != NULL && strcasecmp(in->acr_code, code) == 0;
}

static void
classify_status(const struct classify_input *in, struct classify_result *out)
{
	int auth = in->phase == CLASSIFY_PHASE_EXCHANGE ||
	    in->phase == CLASSIFY_PHASE_TOKEN;
	long st = in->status;

	if (st == 429) {
		classify_set(out, CLASSIFY_THROTTLED, in->phase, NULL);
		return;
	}
	if (st >= 500) {
		classify_set(out, CLASSIFY_UPSTREAM_UNAVAILABLE, in->phase,
		    NULL);
		return;
	}
	switch (st) {
	case 401:
		/* upstream.c retried it with a fresh token already. */
		classify_set(out, CLASSIFY_AUTH_UNAUTHORIZED, in->phase,
		    auth ? CLASSIFY_HINT_TOKEN_401 : NULL);
		return;
	case 403:
		classify_set(out, CLASSIFY_FORBIDDEN_NETWORK, in->phase,
		    auth ? CLASSIFY_HINT_TOKEN_403 : NULL);
		return;
	case 404:
		classify_set(out, CLASSIFY_NOT_FOUND, in->phase,
		    classify_code_is(in, "MANIFEST_UNKNOWN") ?
		    CLASSIFY_HINT_MANIFEST_UNKNOWN :
		    classify_code_is(in, "NAME_UNKNOWN") ?
		    CLASSIFY_HINT_NAME_UNKNOWN : NULL);
		return;
	default:
		/*
		 * Any other refusal is the answer to what was asked (a 405 to
		 * a HEAD, a 416 to a Range past the end, a 400): the registry
		 * is well, and the status, code and message say the rest. A
		 * token endpoint that refuses gives no token, though.
		 */
		classify_set(out, auth ? CLASSIFY_AUTH_UNAUTHORIZED :
		    CLASSIFY_NONE, in->phase, auth ? CLASSIFY_HINT_TOKEN_401 :
		    NULL);
		return;
	}
}

/* ------------------------------------------------------------ per phase */

/* IMDS: whatever failed, the node has no identity to offer. */
static void
classify_imds(const struct classify_input *in, struct classify_result *out)
{
	classify_set(out, CLASSIFY_AUTH_IDENTITY_UNAVAILABLE,
	    CLASSIFY_PHASE_IMDS, in->curl == CURLE_OK && (in->status == 400 ||
	    in->status == 404) ? CLASSIFY_HINT_IMDS_IDENTITY : NULL);
}

/*
 * The storage hop: name, connection or signature trouble is the data
 * endpoint's firewall or DNS; throttling, incidents and stalls are what
 * they are anywhere.
 */
static int
classify_redirect(const struct classify_input *in,
    struct classify_result *out)
{
	if (in->curl == CURLE_COULDNT_RESOLVE_HOST) {
		classify_set(out, CLASSIFY_REDIRECT_FAILED,
		    CLASSIFY_PHASE_REDIRECT, CLASSIFY_HINT_REDIRECT_DNS);
		return 1;
	}
	/* upstream.c's rules: https stays https, no hop into the node. */
	if (in->curl == CURLE_ABORTED_BY_CALLBACK) {
		classify_set(out, CLASSIFY_REDIRECT_FAILED,
		    CLASSIFY_PHASE_REDIRECT, CLASSIFY_HINT_REDIRECT_REFUSED);
		return 1;
	}
	if ((in->curl == CURLE_COULDNT_CONNECT || (in->curl ==
	    CURLE_OPERATION_TIMEDOUT && !in->headers) ||
	    (in->curl == CURLE_OK && in->status >= 400 && in->status < 500 &&
	    in->status != 429 && in->status != 416))) {
		classify_set(out, CLASSIFY_REDIRECT_FAILED,
		    CLASSIFY_PHASE_REDIRECT, NULL);
		return 1;
	}
	return 0;
}

/*
 * Whether the registry or the path to it failed: no answer came in time,
 * or a broken one, or a 5xx. Never an answer to the request (any 4xx:
 * what a client asked for can get those at will), nor a transfer that
 * never went out.
 */
static int
classify_fault(const struct classify_input *in, enum classify_cause cause)
{
	if (in->throttled || in->circuit != CLASSIFY_NONE ||
	    (in->curl == CURLE_OK && in->status >= 400 && in->status < 500))
		return 0;
	switch (cause) {
	case CLASSIFY_DNS_FAILURE:
	case CLASSIFY_CONNECT_TIMEOUT:
	case CLASSIFY_IO_TIMEOUT:
	case CLASSIFY_CONNECTION_REFUSED:
	case CLASSIFY_CONNECTION_RESET:
	case CLASSIFY_TLS_ERROR:
	case CLASSIFY_UPSTREAM_UNAVAILABLE:
	case CLASSIFY_REDIRECT_FAILED:
		return 1;
	default:
		return 0;
	}
}

static void
classify_cause_of(const struct classify_input *in,
    struct classify_result *out)
{
	int failed = in->curl != CURLE_OK || in->status >= 400;

	classify_set(out, CLASSIFY_NONE, in->phase, NULL);
	switch (in->phase) {
	case CLASSIFY_PHASE_DIGEST:
		classify_set(out, CLASSIFY_DIGEST_MISMATCH, in->phase, NULL);
		return;
	case CLASSIFY_PHASE_PLATFORM:
		classify_set(out, CLASSIFY_PLATFORM_MISMATCH, in->phase, NULL);
		return;
	case CLASSIFY_PHASE_IMDS:
		classify_imds(in, out);
		return;
	default:
		break;
	}
	if (in->throttled) {
		classify_set(out, CLASSIFY_THROTTLED, in->phase,
		    CLASSIFY_HINT_LOCAL_PACE);
		return;
	}
	/* Refused without trying: what kept failing is the cause. */
	if (in->circuit != CLASSIFY_NONE) {
		classify_set(out, in->circuit, in->phase, NULL);
		return;
	}
	/* A name that is a typo explains a failure to reach it or find it. */
	if (failed && classify_name_typo(in->host) &&
	    (in->curl != CURLE_OK || in->status == 401 || in->status == 404)) {
		classify_set(out, CLASSIFY_NAME_TYPO, in->phase, NULL);
		return;
	}
	if (in->redirected && classify_redirect(in, out))
		return;
	if (in->curl != CURLE_OK)
		classify_transport(in, out);
	else if (in->status >= 400)
		classify_status(in, out);
	else if (in->status >= 300 && (in->phase == CLASSIFY_PHASE_EXCHANGE ||
	    in->phase == CLASSIFY_PHASE_TOKEN))
		/* Not followed: it carried credentials. */
		classify_set(out, CLASSIFY_REDIRECT_FAILED,
		    CLASSIFY_PHASE_REDIRECT, CLASSIFY_HINT_TOKEN_REDIRECT);
	else if (in->phase == CLASSIFY_PHASE_EXCHANGE ||
	    in->phase == CLASSIFY_PHASE_TOKEN)
		/* Nothing was sent, or no token came back. */
		classify_set(out, CLASSIFY_AUTH_UNAUTHORIZED, in->phase,
		    CLASSIFY_HINT_NO_CREDENTIALS);
	else if (in->phase == CLASSIFY_PHASE_BODY)
		/* Complete at the transport but not what was announced. */
		classify_set(out, CLASSIFY_UPSTREAM_UNAVAILABLE, in->phase,
		    NULL);
}

void
classify(const struct classify_input *in, struct classify_result *out)
{
	classify_cause_of(in, out);
	out->fault = classify_fault(in, out->cause);
}
