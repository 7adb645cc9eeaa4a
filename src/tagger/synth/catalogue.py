"""The intents of the public corpora and the ways a merchant may name them.

Each line: source | intent | parent names | leaf names. A merchant picks one parent name per
parent group and one leaf name per intent, so two merchants name the same intent differently
("Shipping::Tracking", "Orders::Where Is My Order", "WISMO"), as real merchants do.
"""

from __future__ import annotations

from dataclasses import dataclass

_TABLE = """
bitext|create_account|Account;My Account;Account Management|Create Account;Sign Up;Registration;New Account
bitext|delete_account|Account;My Account;Account Management|Delete Account;Close Account;Account Deletion
bitext|recover_password|Account;Login;Account Access|Password Reset;Forgot Password;Recover Password
bitext|switch_account|Account;My Account;Account Management|Switch Account;Change Account;Account Switch
bitext|edit_account|Account;My Account;Account Management|Edit Account;Update Profile;Account Details
bitext|registration_problems|Account;Login;Account Access|Registration Problem;Sign Up Issue;Cannot Register
bitext|check_cancellation_fee|Cancellation;Subscription;Fees|Cancellation Fee;Early Termination Fee;Cancel Fee
bitext|contact_customer_service|Contact;Customer Service;General|Contact Us;Customer Service;Reach Support
bitext|contact_human_agent|Contact;Customer Service;General|Speak To Agent;Human Agent;Talk To Someone
bitext|delivery_options|Delivery;Shipping;Shipping Info|Delivery Options;Shipping Methods;Shipping Options
bitext|delivery_period|Delivery;Shipping;Shipping Info|Delivery Time;Shipping Time;Delivery ETA
bitext|complaint|Feedback;Complaints;Customer Experience|Complaint;Negative;Unhappy Customer
bitext|review|Feedback;Reviews;Customer Experience|Review;Positive;Product Review
bitext|get_invoice|Billing;Invoices;Accounting|Invoice Request;Get Invoice;Receipt
bitext|check_invoices|Billing;Invoices;Accounting|Invoice Question;Check Invoices;Billing History
bitext|newsletter_subscription|Marketing;Newsletter;Subscription|Newsletter;Unsubscribe;Email Preferences
bitext|track_order|Order;Shipping;Order Status|Tracking;Where Is My Order;WISMO;Order Tracking
bitext|change_order|Order;Orders;Order Changes|Change Order;Modify Order;Order Edit
bitext|place_order|Order;Orders;Sales|Place Order;Purchase Help;How To Order
bitext|cancel_order|Order;Orders;Cancellation|Cancel Order;Order Cancellation;Cancel Request
bitext|payment_issue|Payment;Payments;Billing|Payment Issue;Payment Failed;Payment Problem
bitext|check_payment_methods|Payment;Payments;Billing|Payment Methods;Ways To Pay;Accepted Payments
bitext|get_refund|Refund;Returns;Return|Refund Request;Get Refund;Money Back
bitext|check_refund_policy|Refund;Returns;Return|Refund Policy;Return Policy;Returns Info
bitext|track_refund|Refund;Returns;Return|Refund Status;Track Refund;Where Is My Refund
bitext|change_shipping_address|Shipping;Address;Delivery|Change Address;Address Change;Update Address
bitext|set_up_shipping_address|Shipping;Address;Delivery|Add Address;Set Up Address;New Address
banking77|activate_my_card|Card;Cards;Debit Card|Activate Card;Card Activation
banking77|age_limit|Account;Eligibility;Onboarding|Age Limit;Minimum Age
banking77|apple_pay_or_google_pay|Card;Wallet;Mobile Payments|Apple Pay Google Pay;Mobile Wallet
banking77|atm_support|Cash;ATM;Cash Withdrawal|ATM Support;ATM Locations
banking77|automatic_top_up|Top Up;Top-Ups;Wallet|Auto Top Up;Automatic Top-Up
banking77|balance_not_updated_after_bank_transfer|Transfer;Transfers;Balance|Balance Not Updated Transfer;Missing Transfer Funds
banking77|balance_not_updated_after_cheque_or_cash_deposit|Balance;Deposits;Cash|Cheque Deposit Missing;Cash Deposit Not Showing
banking77|beneficiary_not_allowed|Transfer;Transfers;Payees|Beneficiary Not Allowed;Payee Blocked
banking77|cancel_transfer|Transfer;Transfers;Payments|Cancel Transfer;Stop Transfer
banking77|card_about_to_expire|Card;Cards;Debit Card|Card Expiring;Card Renewal
banking77|card_acceptance|Card;Cards;Merchant Acceptance|Card Acceptance;Where Card Works
banking77|card_arrival|Card;Cards;Card Delivery|Card Not Arrived;Card Arrival;Where Is My Card
banking77|card_delivery_estimate|Card;Cards;Card Delivery|Card Delivery Time;Card Delivery Estimate
banking77|card_linking|Card;Cards;Debit Card|Link Card;Card Linking
banking77|card_not_working|Card;Cards;Card Problems|Card Not Working;Card Broken
banking77|card_payment_fee_charged|Fees;Charges;Card Payments|Card Payment Fee;Card Fee Charged
banking77|card_payment_not_recognised|Disputes;Fraud;Card Payments|Unrecognised Card Payment;Unknown Card Charge
banking77|card_payment_wrong_exchange_rate|FX;Exchange;Card Payments|Card Payment Wrong Rate;Bad Exchange Rate Card
banking77|card_swallowed|Cash;ATM;Card Problems|Card Swallowed;ATM Kept Card
banking77|cash_withdrawal_charge|Fees;Charges;Cash|Withdrawal Fee;ATM Fee
banking77|cash_withdrawal_not_recognised|Disputes;Fraud;Cash|Unrecognised Withdrawal;Unknown ATM Withdrawal
banking77|change_pin|Security;Card;PIN|Change PIN;PIN Change
banking77|compromised_card|Security;Fraud;Card Problems|Compromised Card;Card Fraud
banking77|contactless_not_working|Card;Cards;Card Problems|Contactless Not Working;Tap To Pay Issue
banking77|country_support|Account;Eligibility;Onboarding|Country Support;Supported Countries
banking77|declined_card_payment|Card;Payments;Card Payments|Card Declined;Declined Payment
banking77|declined_cash_withdrawal|Cash;ATM;Cash Withdrawal|Withdrawal Declined;ATM Declined
banking77|declined_transfer|Transfer;Transfers;Payments|Transfer Declined;Transfer Rejected
banking77|direct_debit_payment_not_recognised|Disputes;Fraud;Direct Debit|Unknown Direct Debit;Direct Debit Dispute
banking77|disposable_card_limits|Card;Virtual Card;Limits|Disposable Card Limits;Single-Use Card Limit
banking77|edit_personal_details|Account;Profile;Account Management|Edit Personal Details;Change Name Or Address
banking77|exchange_charge|FX;Exchange;Fees|Exchange Fee;Currency Conversion Fee
banking77|exchange_rate|FX;Exchange;Currency|Exchange Rate;Currency Rate
banking77|exchange_via_app|FX;Exchange;Currency|Exchange In App;Convert Currency
banking77|extra_charge_on_statement|Fees;Charges;Statement|Extra Charge;Unexpected Fee
banking77|failed_transfer|Transfer;Transfers;Payments|Transfer Failed;Failed Payment Transfer
banking77|fiat_currency_support|FX;Currency;Eligibility|Supported Currencies;Fiat Currency
banking77|get_disposable_virtual_card|Card;Virtual Card;Cards|Disposable Virtual Card;Single-Use Card
banking77|get_physical_card|Card;Cards;Card Delivery|Physical Card;Get Plastic Card
banking77|getting_spare_card|Card;Cards;Additional Cards|Spare Card;Extra Card
banking77|getting_virtual_card|Card;Virtual Card;Cards|Virtual Card;Get Virtual Card
banking77|lost_or_stolen_card|Security;Card;Fraud|Lost Card;Stolen Card;Lost Or Stolen Card
banking77|lost_or_stolen_phone|Security;Account;Fraud|Lost Phone;Stolen Phone
banking77|order_physical_card|Card;Cards;Card Delivery|Order Card;New Card Order
banking77|passcode_forgotten|Security;Login;Account Access|Forgot Passcode;Passcode Reset
banking77|pending_card_payment|Card;Payments;Pending|Pending Card Payment;Card Payment Pending
banking77|pending_cash_withdrawal|Cash;Pending;Cash Withdrawal|Pending Withdrawal;Withdrawal Pending
banking77|pending_top_up|Top Up;Top-Ups;Pending|Pending Top Up;Top-Up Pending
banking77|pending_transfer|Transfer;Transfers;Pending|Pending Transfer;Transfer Pending
banking77|pin_blocked|Security;Card;PIN|PIN Blocked;Locked PIN
banking77|receiving_money|Transfer;Transfers;Incoming|Receive Money;Incoming Payment
banking77|Refund_not_showing_up|Refund;Refunds;Disputes|Refund Not Showing;Missing Refund
banking77|request_refund|Refund;Refunds;Disputes|Request Refund;Refund Request
banking77|reverted_card_payment?|Card;Payments;Card Payments|Reverted Payment;Payment Reversed
banking77|supported_cards_and_currencies|Card;Eligibility;Currency|Supported Cards;Cards And Currencies
banking77|terminate_account|Account;Account Management;Closure|Close Account;Terminate Account
banking77|top_up_by_bank_transfer_charge|Top Up;Fees;Top-Ups|Bank Transfer Top-Up Fee;Top Up Charge Bank
banking77|top_up_by_card_charge|Top Up;Fees;Top-Ups|Card Top-Up Fee;Top Up Charge Card
banking77|top_up_by_cash_or_cheque|Top Up;Top-Ups;Deposits|Top Up Cash Or Cheque;Cash Deposit
banking77|top_up_failed|Top Up;Top-Ups;Problems|Top-Up Failed;Top Up Not Working
banking77|top_up_limits|Top Up;Top-Ups;Limits|Top-Up Limits;Top Up Limit
banking77|top_up_reverted|Top Up;Top-Ups;Problems|Top-Up Reverted;Top Up Cancelled
banking77|topping_up_by_card|Top Up;Top-Ups;Wallet|Top Up By Card;Card Top-Up
banking77|transaction_charged_twice|Disputes;Payments;Charges|Charged Twice;Duplicate Charge
banking77|transfer_fee_charged|Fees;Transfer;Charges|Transfer Fee;Transfer Charge
banking77|transfer_into_account|Transfer;Transfers;Deposits|Transfer Into Account;Add Money
banking77|transfer_not_received_by_recipient|Transfer;Transfers;Problems|Transfer Not Received;Recipient Not Paid
banking77|transfer_timing|Transfer;Transfers;Timing|Transfer Time;How Long Transfer
banking77|unable_to_verify_identity|Verification;KYC;Identity|Cannot Verify Identity;Verification Failed
banking77|verify_my_identity|Verification;KYC;Identity|Verify Identity;Identity Check
banking77|verify_source_of_funds|Verification;KYC;Compliance|Source Of Funds;Funds Verification
banking77|verify_top_up|Verification;Top Up;Top-Ups|Verify Top-Up;Top Up Verification
banking77|virtual_card_not_working|Card;Virtual Card;Card Problems|Virtual Card Not Working;Virtual Card Issue
banking77|visa_or_mastercard|Card;Cards;Eligibility|Visa Or Mastercard;Card Network
banking77|why_verify_identity|Verification;KYC;Identity|Why Verify;Verification Reason
banking77|wrong_amount_of_cash_received|Cash;ATM;Disputes|Wrong Cash Amount;ATM Short Changed
banking77|wrong_exchange_rate_for_cash_withdrawal|FX;Cash;Exchange|Withdrawal Wrong Rate;ATM Exchange Rate
"""

CATCH_ALLS = ("Other", "N/A", "Spam", "No Action Req::Others", "General Inquiry", "Misc", "Other::Other")
SINGLE_LABELS = ("Support Request", "General", "Customer Inquiry", "Inbound", "Email")
DETAIL_WORDS = ("General", "Question", "Issue", "Request", "Follow Up")
PREFIXES = ("CS", "Inbound", "Pre-Purchase", "Post-Purchase", "Tier 1", "Support")

# Names that say little or nothing about the reason: codes, tiers, teams, and synonyms of the
# parent group that are not paraphrases of it (a team's word for its queue, not a description).
CODE_PREFIXES = ("CR", "RC", "TKT", "Q", "CAT", "R")
TIER_QUEUES = ("Escalation", "Queue A", "Queue B", "Review", "Backlog", "Handoff")
TEAM_NAMES = ("Phoenix", "Falcon", "Blue", "Atlas", "Orion", "Nova", "Red", "Kestrel", "Delta", "Echo")
WEAK_SYNONYMS = {
    "Account": ("Identity Ops", "Member Desk"),
    "Cancellation": ("Retention", "Save Desk"),
    "Contact": ("Routing", "Switchboard"),
    "Delivery": ("Last Mile", "Carrier Desk"),
    "Feedback": ("Voice Of Customer", "NPS"),
    "Billing": ("AR", "Finance Ops"),
    "Marketing": ("CRM", "Lifecycle"),
    "Order": ("Pipeline", "Ops Desk"),
    "Payment": ("Checkout", "PSP"),
    "Refund": ("Finance Desk", "Reversals"),
    "Shipping": ("Logistics", "3PL"),
    "Card": ("Plastics", "Issuing"),
    "Cash": ("Branch Ops", "Network"),
    "Top Up": ("Loads", "Funding"),
    "Transfer": ("Wires", "Rails"),
    "Balance": ("Ledger", "Recon"),
    "Disputes": ("Chargebacks", "Case Mgmt"),
    "Security": ("Trust And Safety", "T&S"),
    "FX": ("Treasury", "Markets"),
    "Fees": ("Pricing", "Rev Ops"),
    "Verification": ("Compliance Desk", "Onboarding Ops"),
}


@dataclass(frozen=True)
class Intent:
    """One intent of a public corpus and the names a merchant may give it."""

    source: str
    name: str
    parents: tuple[str, ...]
    leaves: tuple[str, ...]

    @property
    def group(self) -> str:
        """The parent group: intents a merchant may merge into one parent label."""
        return f"{self.source}:{self.parents[0]}"


def intents() -> list[Intent]:
    """Every intent in the catalogue, in a fixed order."""
    out = []
    for line in _TABLE.strip().splitlines():
        source, name, parents, leaves = line.split("|")
        out.append(Intent(source, name, tuple(parents.split(";")), tuple(leaves.split(";"))))
    return out
