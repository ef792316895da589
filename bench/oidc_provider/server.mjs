// panva/node-oidc-provider 9 configured as the token-endpoint peer of `make bench`.
//
// One node process, one confidential client (client_secret_basic, client_credentials only) and
// RFC 9068 JWT access tokens for one resource server, signed with ALG (ES256 or RS256). The JWKS
// holds one ES256 and one RS256 key, generated at start. Settings come from the environment:
//   PORT            listen port on 127.0.0.1
//   ALG             access-token signing algorithm: ES256 | RS256
//   CLIENT_ID       the client's id
//   CLIENT_SECRET   the client's secret
//   RESOURCE        the resource indicator (audience) of the access tokens
import { generateKeyPairSync } from 'node:crypto';

import Provider from 'oidc-provider';

const port = Number(process.env.PORT ?? 3000);
const alg = process.env.ALG ?? 'ES256';
const clientId = process.env.CLIENT_ID ?? 'bench';
const clientSecret = process.env.CLIENT_SECRET ?? 'bench-secret-bench-secret-bench-secret';
const resource = process.env.RESOURCE ?? 'https://api.bench.example';
const issuer = `http://127.0.0.1:${port}`;

function privateJwk(type, options, keyAlg, kid) {
  const { privateKey } = generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), alg: keyAlg, use: 'sig', kid };
}

const jwks = {
  keys: [
    privateJwk('ec', { namedCurve: 'P-256' }, 'ES256', 'bench-es256'),
    privateJwk('rsa', { modulusLength: 2048 }, 'RS256', 'bench-rs256'),
  ],
};

const configuration = {
  clients: [
    {
      client_id: clientId,
      client_secret: clientSecret,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: 'read',
    },
  ],
  jwks,
  scopes: ['read'],
  cookies: { keys: ['bench-cookie-key-bench-cookie-key'] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => resource,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'read',
        audience: resource,
        accessTokenTTL: 3600,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg } },
      }),
    },
  },
};

const provider = new Provider(issuer, configuration);
provider.on('server_error', (ctx, error) => {
  console.error('server_error', error);
});
provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider ${alg} listening on ${issuer}`);
});
