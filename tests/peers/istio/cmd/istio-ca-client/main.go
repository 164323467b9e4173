// Command istio-ca-client is meshroot's test client for the Istio CA protocol
// (istio.v1.auth.IstioCertificateService/CreateCertificate). It is our own code.
//
// Normal mode behaves like pilot-agent's CA client: the CSR is built by Istio's
// security/pkg/pki/util.GenCSR (RSA 2048 or ECDSA P-256, subject O="", one
// critical URI SAN) and sent through Istio's own
// security/pkg/nodeagent/caclient/providers/citadel.CitadelClient.CSRSign, with the
// bearer token supplied by Istio's JWT credential fetcher (token file), the
// "ClusterID" gRPC header, TLS verification against --root-cert with
// ServerName from --ca-addr (or --server-name), Istio's keepalive and retry
// interceptor.
//
// --impersonate mode behaves like ztunnel as a node proxy: ECDSA P-256 CSR with an
// empty subject and one critical URI SAN, request Metadata
// {"ImpersonatedIdentity": <id>}, sent with the generated
// istio.io/api/security/v1alpha1 client over the same Istio dial options; the
// leaf's first URI SAN must equal the requested identity.
//
// Exit codes: 0 ok, 1 RPC/usage error, 3 response check failed, 4 --timeout hit.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"

	pb "istio.io/api/security/v1alpha1"
	istiogrpc "istio.io/istio/pilot/pkg/grpc"
	"istio.io/istio/pkg/log"
	"istio.io/istio/pkg/security"
	"istio.io/istio/security/pkg/credentialfetcher"
	"istio.io/istio/security/pkg/nodeagent/caclient"
	"istio.io/istio/security/pkg/nodeagent/caclient/providers/citadel"
	pkiutil "istio.io/istio/security/pkg/pki/util"
)

type headerFlags map[string]string

func (h headerFlags) String() string { return fmt.Sprint(map[string]string(h)) }
func (h headerFlags) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return fmt.Errorf("want NAME=VALUE, got %q", v)
	}
	h[k] = val
	return nil
}

var (
	caAddr      = flag.String("ca-addr", "", "CA address host:port (required)")
	rootCert    = flag.String("root-cert", "", "PEM file the CA's serving cert must chain to (empty: system roots)")
	plaintext   = flag.Bool("plaintext", false, "no TLS (pilot-agent does this when CA_ADDR ends in :15010)")
	serverName  = flag.String("server-name", "", "TLS server name to verify (CAEndpointSAN); default: host of --ca-addr, 'localhost' -> istiod.istio-system.svc")
	clientCert  = flag.String("client-cert", "", "optional client cert chain PEM for mTLS (PROV_CERT-style renewal)")
	clientKey   = flag.String("client-key", "", "private key PEM for --client-cert")
	tokenFile   = flag.String("token-file", "", "bearer token file (read per RPC by Istio's JWT credential fetcher; empty: no token)")
	clusterID   = flag.String("cluster-id", "Kubernetes", "value of the ClusterID gRPC header")
	trustDomain = flag.String("trust-domain", "cluster.local", "trust domain (passed to the credential fetcher only)")
	spiffeID    = flag.String("spiffe", "", "URI SAN to put in the CSR, e.g. spiffe://cluster.local/ns/a/sa/b (default with --impersonate: that identity)")
	keyType     = flag.String("key", "rsa", "key type: rsa (2048, pilot-agent default), ec (P-256) or ec384 (P-384)")
	rsaBits     = flag.Int("rsa-bits", 2048, "RSA key size for --key rsa")
	ttl         = flag.Int64("ttl", 86400, "requested validity_duration in seconds")
	certSigner  = flag.String("cert-signer", "", "CertSigner metadata value (normal mode)")
	impersonate = flag.String("impersonate", "", "ztunnel mode: request a cert for this SPIFFE identity via Metadata ImpersonatedIdentity")
	count       = flag.Int("count", 1, "number of requests (benchmark when > 1)")
	concurrency = flag.Int("concurrency", 1, "parallel workers for --count (one connection each)")
	pause       = flag.Duration("pause", 0, "wait this long before each request after the first (with --concurrency 1: idle time on one connection, as between pilot-agent's rotations)")
	freshCSR    = flag.Bool("fresh-csr", false, "generate a new key and CSR for every request (not timed)")
	outDir      = flag.String("out-dir", "", "write cert-chain.pem, key.pem, root-cert.pem (and response.json) here (last successful response)")
	timeout     = flag.Duration("timeout", 60*time.Second, "give up after this long (whole run; 0 = none)")
	logLevel    = flag.String("log-level", "warn", "Istio log level on stderr: debug|info|warn|error|none")
	caHeaders   = headerFlags{}
)

type keyCSR struct{ csr, key []byte }

func identityForCSR() string {
	if *spiffeID != "" {
		return *spiffeID
	}
	return *impersonate
}

// genNormalCSR mirrors SecretManagerClient.generateNewSecret: pkiutil.GenCSR.
func genNormalCSR() (keyCSR, error) {
	opts := pkiutil.CertOptions{Host: identityForCSR(), RSAKeySize: *rsaBits}
	switch *keyType {
	case "rsa":
	case "ec":
		opts.ECSigAlg = pkiutil.EcdsaSigAlg
		opts.ECCCurve = pkiutil.P256Curve
	case "ec384":
		opts.ECSigAlg = pkiutil.EcdsaSigAlg
		opts.ECCCurve = pkiutil.P384Curve
	default:
		return keyCSR{}, fmt.Errorf("unknown --key %q", *keyType)
	}
	csr, key, err := pkiutil.GenCSR(opts)
	return keyCSR{csr, key}, err
}

// genZtunnelCSR mirrors ztunnel's CsrOptions::generate: ECDSA P-256, empty subject,
// exactly one critical URI SAN, PKCS#8 key.
func genZtunnelCSR() (keyCSR, error) {
	if *keyType != "ec" && *keyType != "rsa" {
		return keyCSR{}, fmt.Errorf("--impersonate always uses ECDSA P-256 (like ztunnel)")
	}
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return keyCSR{}, err
	}
	san, err := pkiutil.BuildSubjectAltNameExtension(identityForCSR())
	if err != nil {
		return keyCSR{}, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{*san}}, priv)
	if err != nil {
		return keyCSR{}, err
	}
	k8, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return keyCSR{}, err
	}
	return keyCSR{
		csr: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}),
		key: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: k8}),
	}, nil
}

func genCSR() (keyCSR, error) {
	if *impersonate != "" {
		return genZtunnelCSR()
	}
	return genNormalCSR()
}

func securityOptions() (*security.Options, error) {
	o := &security.Options{
		CAEndpoint:     *caAddr,
		CAEndpointSAN:  *serverName,
		CAProviderName: "Citadel",
		TrustDomain:    *trustDomain,
		ClusterID:      *clusterID,
		CertSigner:     *certSigner,
		CAHeaders:      map[string]string(caHeaders),
	}
	// Same call pilot-agent makes (security.JWT type, token path, no identity provider).
	cf, err := credentialfetcher.NewCredFetcher(security.JWT, *trustDomain, *tokenFile, "")
	if err != nil {
		return nil, err
	}
	o.CredFetcher = cf // nil when --token-file is empty: no authorization header
	return o, nil
}

func tlsOptions() *citadel.TLSOptions {
	if *plaintext {
		return nil
	}
	return &citadel.TLSOptions{RootCert: *rootCert, Key: *clientKey, Cert: *clientCert}
}

// signer is one connection's worth of client.
type signer interface {
	sign(csr []byte) ([]string, error)
	close()
}

type citadelSigner struct{ c *citadel.CitadelClient }

func (s citadelSigner) sign(csr []byte) ([]string, error) { return s.c.CSRSign(csr, *ttl) }
func (s citadelSigner) close()                            { s.c.Close() }

type ztunnelSigner struct {
	conn   *grpc.ClientConn
	client pb.IstioCertificateServiceClient
}

func (s ztunnelSigner) sign(csr []byte) ([]string, error) {
	md := metadata.Pairs("clusterid", *clusterID)
	for k, v := range caHeaders {
		md.Append(k, v)
	}
	ctx := metadata.NewOutgoingContext(context.Background(), md)
	req := &pb.IstioCertificateRequest{
		Csr:              string(csr),
		ValidityDuration: *ttl,
		Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
			security.ImpersonatedIdentity: structpb.NewStringValue(*impersonate),
		}},
	}
	resp, err := s.client.CreateCertificate(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("create certificate: %v", err)
	}
	return resp.CertChain, nil
}
func (s ztunnelSigner) close() { s.conn.Close() }

func newSigner(opts *security.Options) (signer, error) {
	if *impersonate == "" {
		c, err := citadel.NewCitadelClient(opts, tlsOptions())
		if err != nil {
			return nil, err
		}
		return citadelSigner{c}, nil
	}
	var t *istiogrpc.TLSOptions
	if to := tlsOptions(); to != nil {
		t = &istiogrpc.TLSOptions{RootCert: to.RootCert, Key: to.Key, Cert: to.Cert, ServerAddress: *caAddr, SAN: *serverName}
	}
	dialOpts, err := istiogrpc.ClientOptions(nil, t)
	if err != nil {
		return nil, err
	}
	dialOpts = append(dialOpts,
		grpc.WithPerRPCCredentials(caclient.NewDefaultTokenProvider(opts)),
		security.CARetryInterceptor())
	conn, err := grpc.NewClient(*caAddr, dialOpts...)
	if err != nil {
		return nil, err
	}
	return ztunnelSigner{conn, pb.NewIstioCertificateServiceClient(conn)}, nil
}

type certInfo struct {
	Subject   string   `json:"subject"`
	Issuer    string   `json:"issuer"`
	Serial    string   `json:"serial"`
	NotBefore string   `json:"not_before"`
	NotAfter  string   `json:"not_after"`
	IsCA      bool     `json:"is_ca"`
	URIs      []string `json:"uris,omitempty"`
	DNS       []string `json:"dns,omitempty"`
	IPs       []string `json:"ips,omitempty"`
}

type summary struct {
	Mode           string       `json:"mode"`
	ChainElements  int          `json:"chain_elements"`
	CertsPerElem   []int        `json:"certs_per_element"`
	Leaf           *certInfo    `json:"leaf,omitempty"`
	Chain          [][]certInfo `json:"chain"`
	LeafTTLSeconds int64        `json:"leaf_ttl_seconds"`
	Verified       bool         `json:"verified"`
	VerifyError    string       `json:"verify_error,omitempty"`
	CheckError     string       `json:"check_error,omitempty"`
}

func parseAll(p string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	rest := []byte(p)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no certificate in element")
	}
	return out, nil
}

func info(c *x509.Certificate) certInfo {
	ci := certInfo{
		Subject: c.Subject.String(), Issuer: c.Issuer.String(), Serial: c.SerialNumber.Text(16),
		NotBefore: c.NotBefore.UTC().Format(time.RFC3339), NotAfter: c.NotAfter.UTC().Format(time.RFC3339),
		IsCA: c.IsCA, DNS: c.DNSNames,
	}
	for _, u := range c.URIs {
		ci.URIs = append(ci.URIs, u.String())
	}
	for _, ip := range c.IPAddresses {
		ci.IPs = append(ci.IPs, ip.String())
	}
	return ci
}

// inspect checks the response the way the real clients use it: leaf = first
// element, root bundle = last element (may hold several roots), intermediates in
// between (ztunnel keeps only the first cert of each middle element).
func inspect(chain []string) summary {
	s := summary{Mode: "pilot-agent", ChainElements: len(chain)}
	if *impersonate != "" {
		s.Mode = "ztunnel-impersonate"
	}
	if len(chain) < 2 {
		s.CheckError = "response has fewer than 2 elements"
		return s
	}
	roots := x509.NewCertPool()
	inter := x509.NewCertPool()
	var leaf *x509.Certificate
	for i, e := range chain {
		certs, err := parseAll(e)
		if err != nil {
			s.CheckError = fmt.Sprintf("element %d: %v", i, err)
			return s
		}
		s.CertsPerElem = append(s.CertsPerElem, len(certs))
		var infos []certInfo
		for _, c := range certs {
			infos = append(infos, info(c))
		}
		s.Chain = append(s.Chain, infos)
		switch {
		case i == 0:
			leaf = certs[0]
			li := info(leaf)
			s.Leaf = &li
			s.LeafTTLSeconds = int64(leaf.NotAfter.Sub(leaf.NotBefore).Seconds())
		case i == len(chain)-1:
			for _, c := range certs {
				roots.AddCert(c)
			}
		default:
			inter.AddCert(certs[0])
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		s.VerifyError = err.Error()
	} else {
		s.Verified = true
	}
	if *impersonate != "" {
		if len(leaf.URIs) == 0 || leaf.URIs[0].String() != *impersonate {
			s.CheckError = fmt.Sprintf("leaf SAN %v does not match requested identity %s", s.Leaf.URIs, *impersonate)
		}
	}
	return s
}

func writeOut(chain []string, kc keyCSR, s summary) error {
	if err := os.MkdirAll(*outDir, 0o755); err != nil {
		return err
	}
	var all strings.Builder
	for _, e := range chain { // like secretcache.concatCerts
		all.WriteString(e)
		if !strings.HasSuffix(e, "\n") {
			all.WriteString("\n")
		}
	}
	js, _ := json.MarshalIndent(map[string]any{"cert_chain": chain, "summary": s}, "", "  ")
	files := map[string][]byte{
		"cert-chain.pem": []byte(all.String()),
		"key.pem":        kc.key,
		"root-cert.pem":  []byte(chain[len(chain)-1]),
		"csr.pem":        kc.csr,
		"response.json":  js,
	}
	for n, b := range files {
		mode := os.FileMode(0o644)
		if n == "key.pem" {
			mode = 0o600
		}
		if err := os.WriteFile(filepath.Join(*outDir, n), b, mode); err != nil {
			return err
		}
	}
	return nil
}

func configureLogging() {
	o := log.DefaultOptions()
	o.OutputPaths = []string{"stderr"}
	o.ErrorOutputPaths = []string{"stderr"}
	_ = log.Configure(o)
	lvl := log.StringToLevel(*logLevel)
	for name, sc := range log.Scopes() {
		if name != "grpc" {
			sc.SetOutputLevel(lvl)
		}
	}
}

func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	i := int(float64(len(d)-1) * p)
	return d[i]
}

func main() {
	flag.Var(caHeaders, "ca-header", "extra gRPC header NAME=VALUE, repeatable (like CA_HEADER_<NAME>)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "Usage: %s --ca-addr host:port [flags]\n\nIstio CA protocol test client (pilot-agent / ztunnel behaviour).\n\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if *caAddr == "" || (identityForCSR() == "") {
		fmt.Fprintln(os.Stderr, "--ca-addr and --spiffe (or --impersonate) are required")
		flag.Usage()
		os.Exit(1)
	}
	if *count < 1 || *concurrency < 1 {
		fmt.Fprintln(os.Stderr, "--count and --concurrency must be >= 1")
		os.Exit(1)
	}
	configureLogging()
	if *timeout > 0 {
		time.AfterFunc(*timeout, func() {
			fmt.Fprintf(os.Stderr, "error: timeout after %s\n", *timeout)
			os.Exit(4)
		})
	}

	opts, err := securityOptions()
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
	first, err := genCSR()
	if err != nil {
		fmt.Fprintln(os.Stderr, "error: CSR:", err)
		os.Exit(1)
	}

	workers := min(*concurrency, *count)
	signers := make([]signer, workers)
	for i := range signers {
		if signers[i], err = newSigner(opts); err != nil {
			fmt.Fprintln(os.Stderr, "error:", err)
			os.Exit(1)
		}
	}

	var (
		mu        sync.Mutex
		latencies []time.Duration
		errCounts = map[string]int{}
		lastChain []string
		lastKC    keyCSR
		firstErr  error
	)
	jobs := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(s signer) {
			defer wg.Done()
			for range jobs {
				kc := first
				if *freshCSR {
					var err error
					if kc, err = genCSR(); err != nil {
						mu.Lock()
						errCounts["csr: "+err.Error()]++
						mu.Unlock()
						continue
					}
				}
				t0 := time.Now()
				chain, err := s.sign(kc.csr)
				d := time.Since(t0)
				mu.Lock()
				if err != nil {
					errCounts[err.Error()]++
					if firstErr == nil {
						firstErr = err
					}
				} else {
					latencies = append(latencies, d)
					lastChain, lastKC = chain, kc
				}
				mu.Unlock()
			}
		}(signers[w])
	}
	for i := 0; i < *count; i++ {
		if i > 0 && *pause > 0 {
			time.Sleep(*pause)
		}
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	elapsed := time.Since(start)
	for _, s := range signers {
		s.close()
	}

	exit := 0
	if lastChain != nil {
		s := inspect(lastChain)
		if *count == 1 {
			js, _ := json.MarshalIndent(s, "", "  ")
			fmt.Println(string(js))
		}
		if *outDir != "" {
			if err := writeOut(lastChain, lastKC, s); err != nil {
				fmt.Fprintln(os.Stderr, "error: writing output:", err)
				exit = 1
			}
		}
		if s.CheckError != "" || !s.Verified {
			fmt.Fprintf(os.Stderr, "check failed: %s %s\n", s.CheckError, s.VerifyError)
			exit = 3
		}
	}
	if *count > 1 {
		sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
		ok := len(latencies)
		fmt.Printf("requests=%d ok=%d errors=%d concurrency=%d elapsed=%s rps=%.1f p50=%s p90=%s p99=%s max=%s\n",
			*count, ok, *count-ok, workers, elapsed.Round(time.Millisecond), float64(ok)/elapsed.Seconds(),
			pct(latencies, 0.50), pct(latencies, 0.90), pct(latencies, 0.99), pct(latencies, 1.0))
		for msg, n := range errCounts {
			fmt.Printf("error x%d: %s\n", n, msg)
		}
	}
	if firstErr != nil {
		fmt.Fprintln(os.Stderr, "error:", firstErr)
		if exit == 0 {
			exit = 1
		}
	}
	log.Sync()
	os.Exit(exit)
}
