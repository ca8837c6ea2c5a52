/*
 * registry: ACR's data plane (/v2/) and token endpoints (/oauth2/). As in
 * ACR, the token is checked before the repository is looked at, blobs are
 * never served here but redirected to storage with a signed URL, and
 * Basic credentials are taken only by /oauth2/token.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "fakeacr.h"

#define REGISTRY_AUTH_MSG	"authentication required, visit " \
				"https://aka.ms/acr/authorization for more " \
				"information."

void
registry_challenge(struct fa_req *fr)
{
	char	*h;
	int	 n;

	if (fr->fr_repo != NULL)
		n = asprintf(&h, "Bearer realm=\"%s/oauth2/token\","
		    "service=\"%s\",scope=\"repository:%s:pull\"",
		    fakeacr_url(FA_REGISTRY), fa_conf.service, fr->fr_repo);
	else
		n = asprintf(&h, "Bearer realm=\"%s/oauth2/token\","
		    "service=\"%s\"", fakeacr_url(FA_REGISTRY),
		    fa_conf.service);
	if (n != -1) {
		req_set_header(fr, "WWW-Authenticate", h);
		free(h);
	}
}

static void
registry_name_unknown(struct fa_req *fr)
{
	req_error(fr, 404, "NAME_UNKNOWN",
	    "repository name not known to registry",
	    json_pack("{s:s}", "name", fr->fr_repo));
}

/* ACR's answer for a status on this request's endpoint. */
void
registry_error(struct fa_req *fr, int status)
{
	const char	*ep = fr->fr_endpoint, *ref = fr->fr_ref;
	char		*msg = NULL;

	switch (status) {
	case 401:
		registry_challenge(fr);
		req_error(fr, status, "UNAUTHORIZED", REGISTRY_AUTH_MSG,
		    fr->fr_repo == NULL ? NULL : json_pack("[{s:s, s:s, s:s}]",
		    "Type", "repository", "Name", fr->fr_repo,
		    "Action", "pull"));
		break;
	case 403:
		req_error(fr, status, "DENIED", "client with IP '1.2.3.4' is "
		    "not allowed access. Refer https://aka.ms/acr/firewall to "
		    "grant access.", NULL);
		break;
	case 404:
		if (strcmp(ep, "manifests") == 0 && ref != NULL &&
		    !store_valid_digest(ref) && asprintf(&msg,
		    "manifest tagged by \"%s\" is not found", ref) != -1)
			req_error(fr, status, "MANIFEST_UNKNOWN", msg,
			    json_pack("{s:s}", "Tag", ref));
		else if (strcmp(ep, "manifests") == 0 && ref != NULL)
			req_error(fr, status, "MANIFEST_UNKNOWN",
			    "manifest unknown", json_pack("{s:s}", "Digest",
			    ref));
		else if (strcmp(ep, "blobs") == 0 && ref != NULL)
			req_error(fr, status, "BLOB_UNKNOWN",
			    "blob unknown to registry", json_string(ref));
		else if (fr->fr_repo != NULL)
			registry_name_unknown(fr);
		else
			req_error(fr, status, "UNSUPPORTED",
			    "The operation is unsupported.", NULL);
		free(msg);
		break;
	case 429:
		req_error(fr, status, "TOOMANYREQUESTS", "Too many requests. "
		    "Please visit https://aka.ms/acr/skus for more "
		    "information.", NULL);
		break;
	case 502:
	case 503:
	case 504:
		req_error(fr, status, "UNAVAILABLE", "service unavailable",
		    NULL);
		break;
	default:
		req_error(fr, status, "UNKNOWN", req_reason(status), NULL);
		break;
	}
}

/* A current access token for this service granting pull here. */
static int
registry_authorized(struct fa_req *fr)
{
	const char	*h = req_header(fr, "Authorization");
	const char	*type, *name, *act;
	json_t		*c, *a, *v;
	size_t		 i, j;
	int		 ok = 0;

	if (h == NULL && fa_conf.anonymous && fr->fr_repo != NULL)
		return 1;
	if (h != NULL && strncasecmp(h, "Bearer ", 7) == 0 &&
	    (c = auth_verify(h + 7, AUTH_ACCESS)) != NULL) {
		ok = fr->fr_repo == NULL;
		json_array_foreach(json_object_get(c, "access"), i, a) {
			type = json_string_value(json_object_get(a, "type"));
			name = json_string_value(json_object_get(a, "name"));
			if (type == NULL || name == NULL ||
			    strcmp(type, "repository") != 0 ||
			    strcmp(name, fr->fr_repo) != 0)
				continue;
			json_array_foreach(json_object_get(a, "actions"), j, v)
				if ((act = json_string_value(v)) != NULL &&
				    (strcmp(act, "pull") == 0 ||
				    strcmp(act, "*") == 0))
					ok = 1;
		}
		json_decref(c);
	}
	if (!ok)
		registry_error(fr, 401);
	return ok;
}

static void
registry_manifest(struct fa_req *fr)
{
	struct store_manifest	m;
	char			etag[160];

	if (!store_repo_exists(fr->fr_repo)) {
		registry_name_unknown(fr);
		return;
	}
	if (strchr(fr->fr_ref, ':') != NULL &&
	    !store_valid_digest(fr->fr_ref)) {
		req_error(fr, 400, "DIGEST_INVALID", "invalid digest",
		    json_string(fr->fr_ref));
		return;
	}
	if (strchr(fr->fr_ref, ':') == NULL && !store_valid_tag(fr->fr_ref)) {
		req_error(fr, 400, "TAG_INVALID", "invalid tag",
		    json_string(fr->fr_ref));
		return;
	}
	if (store_manifest(fr->fr_repo, fr->fr_ref, &m) == -1) {
		registry_error(fr, 404);
		return;
	}
	snprintf(etag, sizeof(etag), "\"%s\"", m.sm_digest);
	req_set_header(fr, "Content-Type", m.sm_type);
	req_set_header(fr, "Docker-Content-Digest", m.sm_digest);
	req_set_header(fr, "ETag", etag);
	evbuffer_add(fr->fr_body, m.sm_data, m.sm_len);
	store_manifest_free(&m);
	req_send(fr, 200);
}

/* The storage URL: host from a redirect_host fault, else loopback. */
static char *
registry_sas_url(struct fa_req *fr)
{
	const char	*base = fakeacr_url(FA_STORAGE), *host, *port;
	char		*path = NULL, *sig = NULL, *esig = NULL, *ese = NULL;
	char		*url = NULL, se[32];
	struct tm	 tm;
	time_t		 exp = time(NULL) + fa_conf.sas_ttl;

	if ((host = json_string_value(json_object_get(fr->fr_fault,
	    "redirect_host"))) == NULL)
		host = "127.0.0.1";
	port = strrchr(base, ':');
	strftime(se, sizeof(se), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&exp, &tm));
	if (asprintf(&path, "/fakeacr/%s/%s", fr->fr_repo, fr->fr_ref) != -1 &&
	    (sig = auth_sas_sign(path, se)) != NULL &&
	    (esig = evhttp_encode_uri(sig)) != NULL &&
	    (ese = evhttp_encode_uri(se)) != NULL &&
	    asprintf(&url, "%.*s://%s%s%s?sv=2021-08-06&sr=b&sp=r&se=%s"
	    "&sig=%s", (int)(strstr(base, "://") - base), base, host, port,
	    path, ese, esig) == -1)
		url = NULL;
	free(path);
	free(sig);
	free(esig);
	free(ese);
	return url;
}

static void
registry_blob(struct fa_req *fr)
{
	long long	 size;
	char		*url;
	int		 fd;

	if (!store_repo_exists(fr->fr_repo)) {
		registry_name_unknown(fr);
		return;
	}
	if (!store_valid_digest(fr->fr_ref)) {
		req_error(fr, 400, "DIGEST_INVALID", "invalid digest",
		    json_string(fr->fr_ref));
		return;
	}
	if ((fd = store_blob_open(fr->fr_repo, fr->fr_ref, &size)) == -1) {
		registry_error(fr, 404);
		return;
	}
	close(fd);
	if ((url = registry_sas_url(fr)) == NULL) {
		registry_error(fr, 500);
		return;
	}
	req_set_header(fr, "Location", url);
	free(url);
	req_send(fr, 307);
}

static void
registry_tags(struct fa_req *fr)
{
	struct evkeyvalq	 q;
	json_t			*tags, *page;
	const char		*last, *ns;
	char			*link, *elast;
	size_t			 i, n, start = 0;

	if ((tags = store_tags(fr->fr_repo)) == NULL) {
		registry_name_unknown(fr);
		return;
	}
	req_params(fr, 0, &q);
	last = evhttp_find_header(&q, "last");
	ns = evhttp_find_header(&q, "n");
	n = ns != NULL ? strtoul(ns, NULL, 10) : json_array_size(tags);
	if (n > json_array_size(tags))
		n = json_array_size(tags);
	while (last != NULL && start < json_array_size(tags) &&
	    strcmp(json_string_value(json_array_get(tags, start)), last) <= 0)
		start++;
	page = json_array();
	for (i = start; i < json_array_size(tags) && i < start + n; i++)
		json_array_append(page, json_array_get(tags, i));
	if (i < json_array_size(tags) && i > 0 && (elast = evhttp_encode_uri(
	    json_string_value(json_array_get(tags, i - 1)))) != NULL) {
		if (asprintf(&link, "</v2/%s/tags/list?last=%s&n=%zu>; "
		    "rel=\"next\"", fr->fr_repo, elast, n) != -1) {
			req_set_header(fr, "Link", link);
			free(link);
		}
		free(elast);
	}
	evhttp_clear_headers(&q);
	json_decref(tags);
	req_json(fr, 200, json_pack("{s:s, s:o}", "name", fr->fr_repo,
	    "tags", page));
}

/* "type:name:a,b" scopes, space separated; anonymous gets pull only. */
static void
registry_scopes(json_t *access, const char *value, int anonymous)
{
	char	*s, *p, *scope, *name, *acts, *a;
	json_t	*actions;

	if ((s = strdup(value)) == NULL)
		return;
	p = s;
	while ((scope = strsep(&p, " ")) != NULL) {
		if ((name = strchr(scope, ':')) == NULL ||
		    (acts = strrchr(scope, ':')) == name)
			continue;
		*name++ = '\0';
		*acts++ = '\0';
		actions = json_array();
		while ((a = strsep(&acts, ",")) != NULL)
			if (*a != '\0' && (!anonymous ||
			    strcmp(a, "pull") == 0))
				json_array_append_new(actions, json_string(a));
		json_array_append_new(access, json_pack("{s:s, s:s, s:o}",
		    "type", scope, "name", name, "actions", actions));
	}
	free(s);
}

static void
registry_token(struct fa_req *fr)
{
	struct evkeyvalq	 q;
	struct evkeyval		*kv;
	const char		*h = req_header(fr, "Authorization");
	const char		*grant, *service, *u, *p, *rt;
	char			*user, *pass, *sub = NULL, *tok;
	json_t			*c, *access;
	int			 anonymous = 0;

	if (!req_method(fr, EVHTTP_REQ_GET | EVHTTP_REQ_POST))
		return;
	req_params(fr, evhttp_request_get_command(fr->fr_req) ==
	    EVHTTP_REQ_POST, &q);
	grant = evhttp_find_header(&q, "grant_type");
	service = evhttp_find_header(&q, "service");
	u = evhttp_find_header(&q, "username");
	p = evhttp_find_header(&q, "password");
	rt = evhttp_find_header(&q, "refresh_token");
	if (h != NULL && auth_basic(h, &user, &pass) == 0) {
		sub = auth_password(user, pass);
		free(user);
		free(pass);
	} else if (grant != NULL && strcmp(grant, "refresh_token") == 0) {
		if (rt != NULL && (c = auth_verify(rt, AUTH_REFRESH)) != NULL) {
			sub = strdup(json_string_value(json_object_get(c,
			    "sub")));
			json_decref(c);
		}
	} else if (grant != NULL && strcmp(grant, "password") == 0) {
		if (u != NULL && p != NULL)
			sub = auth_password(u, p);
	} else if (h == NULL && fa_conf.anonymous) {
		sub = strdup("anonymous");
		anonymous = 1;
	}
	if (service == NULL || strcmp(service, fa_conf.service) != 0 ||
	    sub == NULL) {
		req_error(fr, 401, "UNAUTHORIZED", REGISTRY_AUTH_MSG, NULL);
	} else {
		access = json_array();
		TAILQ_FOREACH(kv, &q, next)
			if (strcmp(kv->key, "scope") == 0)
				registry_scopes(access, kv->value, anonymous);
		tok = auth_access_token(sub, access);
		/* Like ACR: no expires_in, clients must read the JWT. */
		req_json(fr, tok ? 200 : 500, json_pack("{s:s*}",
		    "access_token", tok));
		free(tok);
	}
	free(sub);
	evhttp_clear_headers(&q);
}

/* IMDS tokens for ACR's resource, or the ARM one older clients ask for. */
static int
registry_audience(const char *aud)
{
	return aud != NULL &&
	    (strcmp(aud, "https://containerregistry.azure.net") == 0 ||
	    strcmp(aud, "https://containerregistry.azure.net/") == 0 ||
	    strcmp(aud, "https://management.azure.com") == 0 ||
	    strcmp(aud, "https://management.azure.com/") == 0);
}

static void
registry_exchange(struct fa_req *fr)
{
	struct evkeyvalq	 q;
	const char		*grant, *service, *tenant, *at, *tid;
	json_t			*c = NULL;
	char			*rt;

	if (!req_method(fr, EVHTTP_REQ_POST))
		return;
	req_params(fr, 1, &q);
	grant = evhttp_find_header(&q, "grant_type");
	service = evhttp_find_header(&q, "service");
	tenant = evhttp_find_header(&q, "tenant");
	at = evhttp_find_header(&q, "access_token");
	if (grant == NULL || strcmp(grant, "access_token") != 0)
		req_error(fr, 400, "UNSUPPORTED",
		    "grant_type must be access_token", NULL);
	else if (service == NULL || strcmp(service, fa_conf.service) != 0)
		req_error(fr, 401, "UNAUTHORIZED",
		    "service does not match this registry", NULL);
	else if (at == NULL || (c = auth_verify(at, AUTH_IMDS)) == NULL ||
	    !registry_audience(json_string_value(json_object_get(c, "aud"))))
		req_error(fr, 401, "UNAUTHORIZED",
		    "failed to verify the Entra ID access token", NULL);
	else if ((tid = json_string_value(json_object_get(c, "tid"))) ==
	    NULL || (tenant != NULL && strcmp(tenant, tid) != 0))
		req_error(fr, 401, "UNAUTHORIZED",
		    "tenant does not match the access token", NULL);
	else {
		rt = auth_refresh_token(json_string_value(json_object_get(c,
		    "sub")), tid);
		req_json(fr, rt ? 200 : 500, json_pack("{s:s*}",
		    "refresh_token", rt));
		free(rt);
	}
	json_decref(c);
	evhttp_clear_headers(&q);
}

/* <name>/tags/list, <name>/manifests/<ref> or <name>/blobs/<digest>. */
static char *
registry_parse(const char *path, const char **kind, char **ref)
{
	char	*p, *slash;
	size_t	 len;

	if ((p = strdup(path)) == NULL)
		return NULL;
	len = strlen(p);
	*ref = NULL;
	if (len > 10 && strcmp(p + len - 10, "/tags/list") == 0) {
		p[len - 10] = '\0';
		*kind = "tags";
		return p;
	}
	if ((slash = strrchr(p, '/')) != NULL) {
		*slash = '\0';
		*ref = slash + 1;
		if ((slash = strrchr(p, '/')) != NULL) {
			*slash = '\0';
			*kind = slash + 1;
			if (strcmp(*kind, "manifests") == 0 ||
			    strcmp(*kind, "blobs") == 0)
				return p;
		}
	}
	free(p);
	return NULL;
}

void
registry_handle(struct fa_req *fr)
{
	const char	*path, *kind = NULL;
	char		*repo, *ref;

	path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(fr->fr_req));
	if (path == NULL)
		path = "";
	if (strcmp(path, "/v2/") == 0 || strcmp(path, "/v2") == 0) {
		if (req_route(fr, "base", NULL, NULL) ||
		    !req_method(fr, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD) ||
		    !registry_authorized(fr))
			return;
		req_json(fr, 200, json_object());
	} else if (strcmp(path, "/oauth2/token") == 0) {
		if (!req_route(fr, "token", NULL, NULL))
			registry_token(fr);
	} else if (strcmp(path, "/oauth2/exchange") == 0) {
		if (!req_route(fr, "exchange", NULL, NULL))
			registry_exchange(fr);
	} else if (strncmp(path, "/v2/", 4) == 0 &&
	    (repo = registry_parse(path + 4, &kind, &ref)) != NULL) {
		/* The kind points into repo: use it before the free. */
		if (req_route(fr, strcmp(kind, "tags") == 0 ? "tags" :
		    strcmp(kind, "blobs") == 0 ? "blobs" : "manifests", repo,
		    ref)) {
			free(repo);
			return;
		}
		free(repo);
		if (fr->fr_repo == NULL || !store_valid_name(fr->fr_repo))
			req_error(fr, 400, "NAME_INVALID",
			    "invalid repository name", NULL);
		else if (!req_method(fr, strcmp(fr->fr_endpoint, "tags") == 0 ?
		    EVHTTP_REQ_GET : EVHTTP_REQ_GET | EVHTTP_REQ_HEAD) ||
		    !registry_authorized(fr))
			return;
		else if (strcmp(fr->fr_endpoint, "manifests") == 0)
			registry_manifest(fr);
		else if (strcmp(fr->fr_endpoint, "blobs") == 0)
			registry_blob(fr);
		else
			registry_tags(fr);
	} else if (!req_route(fr, "other", NULL, NULL))
		req_error(fr, 404, "UNSUPPORTED",
		    "The operation is unsupported.", NULL);
}
