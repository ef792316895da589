// The shop page. It holds no token: the BFF's HttpOnly cookie goes with every same-origin
// request, and unsafe requests carry the session's CSRF token from /bff/me.
"use strict";

const state = { me: null, csrf: null, products: [], cart: new Map() };
const $ = (selector) => document.querySelector(selector);

function money(cents) {
  return (cents / 100).toFixed(2) + " €";
}

// Which part answered: a shop service names itself; the gateway signs its own answers
// (Server: bastion); anything else is the BFF.
function decider(response) {
  const service = response.headers.get("x-shop-service");
  if (service) return service + " service";
  if (response.headers.get("server") === "bastion") return "gateway";
  return "BFF";
}

function log(what, response, body) {
  const item = document.createElement("li");
  const ok = response.ok;
  item.className = ok ? "ok" : "no";
  const title = document.createElement("span");
  title.className = "what";
  title.textContent = what + ": ";
  item.append(title);
  const who = decider(response);
  let text;
  if (ok) {
    const because = body && body.allowed_by ? " (" + body.allowed_by + ")" : "";
    text = who === "BFF" ? "done by the BFF" : "allowed by the gateway, then by the " + who + because;
    if (body && Array.isArray(body.trail)) {
      text += "; " + body.trail.slice(1).map((step) => step.part + ": " + step.allowed_by).join("; ");
    }
  } else {
    const challenge = response.headers.get("www-authenticate");
    const detail = body && (body.detail || body.title) ? ": " + (body.detail || body.title) : "";
    text = "refused by the " + who + " (" + response.status + detail + ")";
    if (challenge) text += " — " + challenge;
  }
  item.append(document.createTextNode(text));
  $("#log").prepend(item);
}

async function call(what, method, path, payload, { csrf = true } = {}) {
  const headers = { Accept: "application/json" };
  if (payload !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && csrf && state.csrf) headers["X-CSRF-Token"] = state.csrf;
  const response = await fetch(path, {
    method,
    headers,
    body: payload === undefined ? undefined : JSON.stringify(payload),
    credentials: "same-origin",
  });
  let body = null;
  try {
    body = await response.json();
  } catch (error) {
    body = null;
  }
  log(what, response, body);
  return { response, body };
}

function renderProducts() {
  const list = $("#products");
  list.replaceChildren();
  for (const product of state.products) {
    const card = $("#product-card").content.cloneNode(true);
    const article = card.querySelector("article");
    article.dataset.sku = product.sku;
    card.querySelector(".name").textContent = product.name;
    card.querySelector(".description").textContent = product.description;
    card.querySelector(".price").textContent = money(product.price);
    const add = card.querySelector(".add");
    add.disabled = !state.me;
    add.addEventListener("click", () => addToCart(product));
    const edit = card.querySelector(".edit");
    edit.hidden = !state.me;
    edit.querySelector(".new-price").value = product.price;
    edit.addEventListener("submit", (event) => {
      event.preventDefault();
      editPrice(product.sku, Number(edit.querySelector(".new-price").value));
    });
    list.append(card);
  }
}

function renderCart() {
  const list = $("#cart");
  list.replaceChildren();
  let total = 0;
  for (const [sku, quantity] of state.cart) {
    const product = state.products.find((p) => p.sku === sku);
    const item = document.createElement("li");
    item.textContent = quantity + " × " + (product ? product.name : sku);
    list.append(item);
    total += product ? product.price * quantity : 0;
  }
  $("#cart-total").textContent = state.cart.size ? "Total " + money(total) : "Empty";
  $("#place-order").disabled = !state.me || state.cart.size === 0;
}

function renderOrders(orders) {
  const body = $("#orders tbody");
  body.replaceChildren();
  for (const order of orders) {
    const row = document.createElement("tr");
    row.dataset.order = order.id;
    const items = order.items.map((i) => i.quantity + "× " + i.sku).join(", ");
    for (const value of [order.id, order.customer, items, money(order.total), order.status]) {
      const cell = document.createElement("td");
      cell.textContent = value;
      row.append(cell);
    }
    body.append(row);
  }
}

async function loadCatalog() {
  const { response, body } = await call("Browse the catalog", "GET", "/bff/api/catalog/products");
  if (response.ok) state.products = body.products;
  renderProducts();
  renderCart();
}

function addToCart(product) {
  state.cart.set(product.sku, (state.cart.get(product.sku) || 0) + 1);
  renderCart();
}

async function placeOrder() {
  const items = [...state.cart].map(([sku, quantity]) => ({ sku, quantity }));
  const { response } = await call("Place an order", "POST", "/bff/api/orders", { items });
  if (response.ok) {
    state.cart.clear();
    renderCart();
    await loadOrders();
  }
}

async function loadOrders() {
  const { response, body } = await call("List my orders", "GET", "/bff/api/orders");
  if (response.ok) renderOrders(body.orders);
}

async function editPrice(sku, price) {
  const { response } = await call("Edit the price of " + sku, "PUT", "/bff/api/admin/catalog/products/" + encodeURIComponent(sku), { price });
  if (response.ok) await loadCatalog();
}

async function signOut() {
  const { response, body } = await call("Sign out", "POST", "/bff/logout");
  if (response.ok && body && body.logout_url) {
    window.location.assign(body.logout_url);
  } else {
    window.location.assign("/");
  }
}

async function whoAmI() {
  const response = await fetch("/bff/me", { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (!response.ok) return null;
  return response.json();
}

async function start() {
  state.me = await whoAmI();
  if (state.me) {
    state.csrf = state.me.csrf_token;
    const claims = state.me.claims;
    const roles = (claims.roles || []).join(", ");
    $("#user").textContent = "Signed in as " + (claims.preferred_username || claims.name || claims.sub) + (roles ? " (" + roles + ")" : "");
    $("#sign-in").hidden = true;
    $("#sign-out").hidden = false;
    for (const id of ["#load-orders", "#peek-button", "#pay-directly", "#no-csrf"]) $(id).disabled = false;
  }
  $("#sign-out").addEventListener("click", signOut);
  $("#place-order").addEventListener("click", placeOrder);
  $("#load-orders").addEventListener("click", loadOrders);
  $("#peek").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = $("#peek-id").value;
    call("Open order #" + id, "GET", "/bff/api/orders/" + encodeURIComponent(id));
  });
  $("#pay-directly").addEventListener("click", () =>
    call("Pay without ordering", "POST", "/bff/api/payments/charges", { amount: 100, customer: "me" }));
  $("#no-csrf").addEventListener("click", () =>
    call("Order without the CSRF token", "POST", "/bff/api/orders", { items: [{ sku: "mug", quantity: 1 }] }, { csrf: false }));
  await loadCatalog();
}

start();
