// Confirms a SetupIntent with Stripe.js, then posts its id to our server, which checks it
// with Stripe and saves the card as the default payment method.
(function () {
  const form = document.getElementById("card-form");
  const secret = JSON.parse(document.getElementById("client-secret").textContent);
  const stripe = Stripe(JSON.parse(document.getElementById("publishable-key").textContent));
  const card = stripe.elements().create("card");
  card.mount("#card-element");
  form.addEventListener("submit", async (event) => {
    if (document.getElementById("setup-intent").value) return; // confirmed: let it post
    event.preventDefault();
    const button = document.getElementById("card-submit");
    button.disabled = true;
    const result = await stripe.confirmCardSetup(secret, { payment_method: { card } });
    if (result.error) {
      document.getElementById("card-errors").textContent = result.error.message;
      button.disabled = false;
      return;
    }
    document.getElementById("setup-intent").value = result.setupIntent.id;
    form.submit();
  });
})();
